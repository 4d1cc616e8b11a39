//! Splitting a YAML stream into its documents, and YAML errors with file line numbers.

/// The documents of a YAML stream, each with the line it starts on. Split at `---` lines,
/// as `kubectl` does, so messages can give each document's own line numbers.
pub(super) fn documents(text: &str) -> Vec<(usize, String)> {
    let mut documents = vec![(1, String::new())];
    for (index, line) in text.lines().enumerate() {
        if line == "---" || line.starts_with("--- ") {
            documents.push((index + 2, String::new()));
        } else if let Some((_, document)) = documents.last_mut() {
            document.push_str(line);
            document.push('\n');
        }
    }
    documents
}

/// serde_norway's message, with its line made relative to the file rather than the document.
pub(super) fn yaml_problem(error: &serde_norway::Error, first_line: usize) -> String {
    let message = error.to_string();
    match error.location() {
        Some(location) => {
            let text = message
                .split(" at line ")
                .next()
                .unwrap_or(&message)
                .to_owned();
            let line = first_line + location.line() - 1;
            format!(
                "invalid YAML at line {line}, column {}: {text}",
                location.column()
            )
        }
        None => format!("invalid YAML: {message}"),
    }
}
