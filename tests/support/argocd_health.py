"""Runs an Argo CD resource health script the way Argo CD does, with a real Lua interpreter.

Usage: argocd_health.py SCRIPT.lua OBJECT.json

Argo CD (util/lua) runs a `resource.customizations.health.<group>_<kind>` script in gopher-lua,
a Lua 5.1, with the base and table libraries only (no string or math library, and so no string
methods), the object as the global `obj` (maps and lists as tables, lists from index 1, JSON
null as nil), and reads the table it returns: `status` (Healthy, Progressing, Degraded,
Suspended, Missing or Unknown) and `message`. This does the same in Lua 5.1 (lupa's lua51) and
prints {"status": ..., "message": ...} as JSON; it fails on anything else a script returns.
"""

import json
import sys

from lupa import lua51

# What Argo CD's base library offers a script, without the file-loading functions.
BASE = [
    "assert", "error", "getmetatable", "ipairs", "next", "pairs", "pcall", "rawequal", "rawget",
    "rawset", "select", "setmetatable", "tonumber", "tostring", "type", "unpack", "xpcall",
]
STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def to_lua(lua, value):
    if isinstance(value, dict):
        table = lua.table()
        for key, item in value.items():
            if item is not None:
                table[key] = to_lua(lua, item)
        return table
    if isinstance(value, list):
        table = lua.table()
        for index, item in enumerate(value, start=1):
            table[index] = to_lua(lua, item)
        return table
    return value


def main():
    script_path, object_path = sys.argv[1], sys.argv[2]
    with open(script_path, encoding="utf-8") as f:
        script = f.read()
    with open(object_path, encoding="utf-8") as f:
        obj = json.load(f)

    lua = lua51.LuaRuntime(unpack_returned_tuples=False, register_eval=False)
    run = lua.eval(
        """
        function(script, base, obj)
          local env = {obj = obj, table = table}
          for _, name in ipairs(base) do env[name] = _G[name] end
          env._G = env
          local chunk, problem = loadstring(script, "health.lua")
          if chunk == nil then error(problem) end
          setfenv(chunk, env)
          -- No string library: strings have no methods, as in gopher-lua without it.
          local strings = debug.getmetatable("")
          debug.setmetatable("", nil)
          local ok, result = pcall(chunk)
          debug.setmetatable("", strings)
          if not ok then error(result) end
          return result
        end
        """
    )
    base = lua.table_from(BASE)
    result = run(script, base, to_lua(lua, obj))
    if lua.eval("type")(result) != "table":
        sys.exit(f"the script returned {result!r}, not a table")
    answer = {key: result[key] for key in ("status", "message")}
    extra = [key for key in result.keys() if key not in answer]
    if extra:
        sys.exit(f"the script returned fields Argo CD does not read: {extra}")
    if answer["status"] not in STATUSES:
        sys.exit(f"not an Argo CD health status: {answer['status']!r}")
    if not isinstance(answer["message"], str):
        sys.exit(f"the message is not a string: {answer['message']!r}")
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
