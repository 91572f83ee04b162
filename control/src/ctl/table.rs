//! Aligned text tables and number formatting for `cutover ctl` output.

/// Renders `rows` under `headers`, columns left-aligned and separated by two spaces, no
/// trailing spaces. Rows shorter than the header get empty cells.
pub(super) fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(widths.len()) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, width) in widths.iter().enumerate() {
            let cell = row.get(i).map_or("", String::as_str);
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = width.saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A number as an operator writes it: `75`, `0.5`, `99.99`.
pub(super) fn num(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

/// A share in `0.0..=1.0` as a percent with at most two decimals; shares that would round to
/// 0 % or 100 % without being exactly that show as `<0.01%` and `>99.99%`.
pub(super) fn percent(share: f64) -> String {
    let p = share * 100.0;
    let rounded = (p * 100.0).round() / 100.0;
    if p > 0.0 && rounded <= 0.0 {
        "<0.01%".to_string()
    } else if p < 100.0 && rounded >= 100.0 {
        ">99.99%".to_string()
    } else {
        format!("{}%", num(rounded))
    }
}

/// `text` cut to `max` characters, with `…` when cut; newlines shown as spaces.
pub(super) fn truncate(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        flat
    } else {
        let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_columns_without_trailing_spaces() {
        let out = render(
            &["ROUTE", "NEW", "NOTE"],
            &[
                vec!["orders".into(), "10".into(), String::new()],
                vec!["a".into(), "100".into(), "x".into()],
                vec!["short".into()],
            ],
        );
        assert_eq!(
            out,
            "ROUTE   NEW  NOTE\n\
             orders  10\n\
             a       100  x\n\
             short\n"
        );
    }

    #[test]
    fn unicode_cells_align_by_characters() {
        let out = render(&["A", "B"], &[vec!["é→".into(), "x".into()]]);
        assert_eq!(out, "A   B\né→  x\n");
    }

    #[test]
    fn numbers() {
        assert_eq!(num(75.0), "75");
        assert_eq!(num(0.5), "0.5");
        assert_eq!(num(-1.0), "-1");
        assert_eq!(num(99.99), "99.99");
    }

    #[test]
    fn percents() {
        assert_eq!(percent(0.25), "25%");
        assert_eq!(percent(0.0), "0%");
        assert_eq!(percent(1.0), "100%");
        assert_eq!(percent(1.0 / 3.0), "33.33%");
        assert_eq!(percent(0.0001), "0.01%");
        assert_eq!(percent(0.000_001), "<0.01%");
        assert_eq!(percent(0.999_999), ">99.99%");
    }

    #[test]
    fn truncation() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("a\nb", 5), "a b");
    }
}
