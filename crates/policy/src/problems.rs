//! Validation and parse errors with positions a policy editor can point at.
use miette::Diagnostic;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    /// 1-based line and column (in characters) of the first offending span, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    /// Byte offset and length of that span in the submitted text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub length: Option<usize>,
}

impl Problem {
    pub fn plain(message: String) -> Problem {
        Problem { message, help: None, line: None, column: None, offset: None, length: None }
    }

    pub fn from_diagnostic(d: &(impl Diagnostic + ?Sized), text: &str) -> Problem {
        let mut p = Problem::plain(d.to_string());
        p.help = d.help().map(|h| h.to_string());
        if let Some(span) = d.labels().and_then(|mut l| l.next()) {
            let offset = span.offset().min(text.len());
            let (line, column) = line_column(text, offset);
            p.line = Some(line);
            p.column = Some(column);
            p.offset = Some(offset);
            p.length = Some(span.len());
        }
        p
    }

    pub fn from_parse(e: &cedar_policy::ParseErrors, text: &str) -> Vec<Problem> {
        e.iter().map(|e| Problem::from_diagnostic(e, text)).collect()
    }
}

/// 1-based line and character column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut at = offset;
    while at > 0 && !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::line_column;
    #[test]
    fn positions_are_one_based_and_count_characters() {
        assert_eq!(line_column("abc", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("é\nx", 3), (2, 1));
    }
}
