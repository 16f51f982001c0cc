//! Line input shared by the line REPL and the TUI: whether more lines are needed (open brackets), the word
//! being completed and its candidates.

/// Open brackets outside strings and comments: more lines are needed.
pub fn open_brackets(src: &str) -> i64 {
    let (mut depth, mut chars) = (0i64, src.chars().peekable());
    let mut in_str: Option<char> = None;
    while let Some(c) = chars.next() {
        match in_str {
            Some(q) => {
                if c == '\\' {
                    chars.next();
                } else if c == q {
                    in_str = None;
                }
            }
            None => match c {
                '"' | '`' | '\'' => in_str = Some(c),
                '/' if chars.peek() == Some(&'/') => while chars.next().is_some_and(|c| c != '\n') {},
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => depth -= 1,
                _ => {}
            },
        }
    }
    depth
}

/// Byte offset where the identifier before `pos` starts.
pub fn word_start(line: &str, pos: usize) -> usize {
    line[..pos].rfind(|c: char| !(c.is_alphanumeric() || c == '_')).map(|i| i + 1).unwrap_or(0)
}

/// Completion candidates for `word`: the API's function names and the variables in scope, sorted, unique.
pub fn candidates(word: &str, variables: &[String]) -> Vec<String> {
    if word.is_empty() {
        return Vec::new();
    }
    let mut m: Vec<String> = crate::script::api::API
        .iter()
        .map(|(n, ..)| n.to_string())
        .chain(variables.iter().cloned())
        .filter(|n| n.starts_with(word))
        .collect();
    m.sort();
    m.dedup();
    m
}

/// Whether `name` is an API function (completed with an opening bracket in the REPL).
pub fn is_function(name: &str) -> bool {
    crate::script::api::API.iter().any(|(n, ..)| *n == name)
}
