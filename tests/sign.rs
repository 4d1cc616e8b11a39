//! `extctl sign` reproduces the protocol document's test vectors (computed independently with
//! Python's hmac) and refuses bad input with precise errors.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn sign(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_extctl"))
        .arg("sign")
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn token_file(token: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "{token}").unwrap();
    file
}

/// `extctl sign` flags: the token source, `(project, control, status)`, then `extra`.
fn flags<'a>(
    token: &[&'a str],
    call: (&'a str, &'a str, &'a str),
    extra: &[&'a str],
) -> Vec<&'a str> {
    let (project, control, status) = call;
    let mut flags = token.to_vec();
    flags.extend([
        "--project",
        project,
        "--control",
        control,
        "--status",
        status,
    ]);
    flags.extend_from_slice(extra);
    flags
}

/// The value of header `name` in `extctl sign`'s output.
fn header<'a>(text: &'a str, name: &str) -> &'a str {
    let prefix = format!("{name}: ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap()
}

const VECTOR_1: (&str, &str, &str) = ("1", "2", "pass");
/// The first vector's timestamp and nonce.
const AT_VECTOR_1: [&str; 4] = [
    "--timestamp",
    "1700000000",
    "--nonce",
    "0123456789abcdef0123456789abcdef",
];
const VECTOR_2: (&str, &str, &str) = ("42", "7", "fail");

#[test]
fn reproduces_the_first_test_vector_from_a_token_file() {
    let token = token_file("foo");
    let from_file = ["--token-file", token.path().to_str().unwrap()];
    let output = sign(&flags(&from_file, VECTOR_1, &AT_VECTOR_1), &[], None);
    assert_eq!(
        stdout(&output),
        "X-Gitlab-Timestamp: 1700000000\n\
         X-Gitlab-Nonce: 0123456789abcdef0123456789abcdef\n\
         X-Gitlab-Hmac-Sha256: 25de0cc08468ff622368cd3e065faff71b6820ca3555fba5ef050fee2509092b\n"
    );
}

#[test]
fn reproduces_the_second_test_vector_from_the_environment_and_explains() {
    let from_env = ["--token-env", "CHECKER_TOKEN"];
    let fixed = [
        "--timestamp",
        "1700000000",
        "--nonce",
        "fedcba9876543210fedcba9876543210",
        "--explain",
    ];
    let output = sign(
        &flags(&from_env, VECTOR_2, &fixed),
        &[("CHECKER_TOKEN", "s3cr3t-t0ken")],
        None,
    );
    let text = stdout(&output);
    assert!(text.contains(
        "# 1700000000fedcba9876543210fedcba9876543210/api/v4/projects/42/compliance_external_controls/7/statusstatus=fail\n"
    ), "{text}");
    assert!(text.ends_with(
        "X-Gitlab-Hmac-Sha256: df2a5ddb4dfb05f4a77e28b89fef12ab824b522a07773b7b4d09e67e68fbd65f\n"
    ), "{text}");
    assert!(!text.contains("s3cr3t-t0ken"), "the token is never printed");
}

/// A project given by its path is signed decoded (the signature computed independently:
/// python3 -c 'import hmac,hashlib;print(hmac.new(b"foo",b"17000000000123456789abcdef0123456789abcdef/api/v4/projects/group/sub/my.project/compliance_external_controls/2/statusstatus=pass",hashlib.sha256).hexdigest())')
/// and sent encoded.
#[test]
fn a_project_path_is_signed_decoded_and_sent_encoded() {
    let token = token_file("foo");
    let from_file = ["--token-file", token.path().to_str().unwrap()];
    let fixed = [
        AT_VECTOR_1.as_slice(),
        &["--explain", "--curl", "http://extctl.extctl.svc"],
    ]
    .concat();
    let call = ("group/sub/my.project", "2", "pass");
    let text = stdout(&sign(&flags(&from_file, call, &fixed), &[], None));
    assert!(text.contains(
        "# 17000000000123456789abcdef0123456789abcdef/api/v4/projects/group/sub/my.project/compliance_external_controls/2/statusstatus=pass\n"
    ), "{text}");
    assert!(text.contains(
        "curl -X PATCH 'http://extctl.extctl.svc/api/v4/projects/group%2Fsub%2Fmy.project/compliance_external_controls/2/status'"
    ), "{text}");
    assert!(text.contains(
        "-H 'X-Gitlab-Hmac-Sha256: 50f33c7c0df2402b290c81b4cfd0106bd265c3cf7b73b1b060860a8432dba61e'"
    ), "{text}");
}

#[test]
fn prints_a_curl_command_and_reads_the_token_from_stdin() {
    let curl = ["--curl", "http://extctl.extctl.svc/"];
    let output = sign(
        &flags(&["--token-stdin"], ("42", "7", "pass"), &curl),
        &[],
        Some("s3cr3t-t0ken\n"),
    );
    let text = stdout(&output);
    assert!(text.starts_with(
        "curl -X PATCH 'http://extctl.extctl.svc/api/v4/projects/42/compliance_external_controls/7/status' \\\n"
    ), "{text}");
    assert!(text.contains("-H 'X-Gitlab-Hmac-Sha256: "), "{text}");
    assert!(text.ends_with("-d '{\"status\":\"pass\"}'\n"), "{text}");
}

#[test]
fn defaults_to_now_and_a_fresh_random_nonce() {
    let token = token_file("foo");
    let args = flags(
        &["--token-file", token.path().to_str().unwrap()],
        VECTOR_1,
        &[],
    );
    let (first, second) = (
        stdout(&sign(&args, &[], None)),
        stdout(&sign(&args, &[], None)),
    );
    let nonce = header(&first, "X-Gitlab-Nonce");
    assert_eq!(nonce.len(), 32);
    assert_ne!(
        nonce,
        header(&second, "X-Gitlab-Nonce"),
        "a fresh nonce each time"
    );
    let timestamp: i64 = header(&first, "X-Gitlab-Timestamp").parse().unwrap();
    assert!((jiff::Timestamp::now().as_second() - timestamp).abs() <= 2);
}

#[test]
fn bad_input_gets_a_precise_error() {
    let token = token_file("foo");
    let from_file = ["--token-file", token.path().to_str().unwrap()];
    let cases = [
        (
            flags(&from_file, ("1", "2", "pending"), &[]),
            "\"pending\" is not pass, fail or not_applicable",
        ),
        (
            flags(&from_file, VECTOR_1, &["--nonce", "short"]),
            "--nonce must be exactly 32 characters, got 5",
        ),
        (flags(&[], VECTOR_1, &[]), "--token-file"),
        (
            flags(&["--token-file", "/nonexistent/token"], VECTOR_1, &[]),
            "cannot read --token-file /nonexistent/token",
        ),
        (
            flags(&["--token-env", "EXTCTL_TEST_UNSET_VAR"], VECTOR_1, &[]),
            "environment variable EXTCTL_TEST_UNSET_VAR is not set",
        ),
    ];
    for (args, expected) in cases {
        let output = sign(&args, &[], None);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
