#!/usr/bin/env python3
"""Adds to fuzz/corpus/<target>/ the few inputs of fuzz/target/work/<target>/ that cover most.

    python3 fuzz/pick_corpus.py <target> <how many at most>

`cargo fuzz cmin` keeps every input that adds any feature (hundreds of files here); this keeps
the committed corpus small instead. It runs libFuzzer's set-cover merge to learn each input's
features (edges, without hit counts), then picks greedily the input adding the most features
not yet covered by the committed corpus and the inputs picked so far (the smaller on a tie),
until `how many` or nothing more to gain. Run from the repository root after `cargo fuzz build`.
"""

import os
import shutil
import subprocess
import sys
import tempfile

target, budget = sys.argv[1], int(sys.argv[2])
binary = f"fuzz/target/x86_64-unknown-linux-gnu/release/{target}"
corpus, work = f"fuzz/corpus/{target}", f"fuzz/target/work/{target}"

with tempfile.TemporaryDirectory() as scratch:
    control = os.path.join(scratch, "control")
    # A copy of the committed corpus as the merge's initial corpus: run first, it is credited
    # with what any first input covers (the targets' one-time set-up).
    output = os.path.join(scratch, "out")
    shutil.copytree(corpus, output)
    subprocess.run(
        ["nice", "-n", "19", binary, "-merge=1", "-set_cover_merge=1", "-use_counters=0",
         f"-merge_control_file={control}", output, work],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lines = open(control).read().split("\n")

count, initial = int(lines[0]), int(lines[1])
files = lines[2:2 + count]
features = {}
for line in lines[2 + count:]:
    fields = line.split()
    if fields and fields[0] == "FT":
        features[int(fields[1])] = set(map(int, fields[2:]))

names = set(os.listdir(corpus))
covered = set().union(*(features.get(i, set()) for i in range(initial)))
# Inputs already committed may also be in the working corpus.
candidates = [i for i in range(initial, count) if os.path.basename(files[i]) not in names]
size = {i: os.path.getsize(files[i]) for i in candidates}
picked = []
while len(picked) < budget and candidates:
    best = max(candidates, key=lambda i: (len(features.get(i, set()) - covered), -size[i]))
    if not features.get(best, set()) - covered:
        break
    picked.append(best)
    covered |= features[best]
    candidates.remove(best)
    shutil.copy(files[best], corpus)

everything = set().union(*features.values())
print(f"{target}: added {len(picked)} inputs ({sum(size[i] for i in picked)} bytes); "
      f"the corpus covers {len(covered)} of the {len(everything)} features seen")
