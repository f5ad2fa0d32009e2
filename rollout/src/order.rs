//! The decode order made visible: each token coloured by the step that committed it, from
//! blue (early) to red (late), for a terminal (ANSI 256 colours) or a self-contained HTML page.
//! Left-to-right writing shows as a smooth gradient; "sketch first" as early islands (often the
//! code's skeleton) in a late sea.

/// A token's text and the step it was committed at (-1: pad filled after the answer).
pub type Piece = (String, i64);

/// Blue → cyan → green → yellow → red in the xterm 256-colour cube.
const RAMP: [u8; 16] = [21, 27, 33, 39, 45, 51, 50, 48, 46, 82, 118, 190, 226, 214, 208, 196];

fn fraction(step: i64, last: i64) -> f64 {
    if last <= 0 {
        0.0
    } else {
        (step.max(0) as f64 / last as f64).clamp(0.0, 1.0)
    }
}

/// Model text made safe for a terminal: control characters (other than newline and tab) shown
/// as their escape, so a completion cannot move the cursor or change colours.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() && c != '\n' && c != '\t' { c.escape_default().to_string() } else { c.to_string() })
        .collect()
}

/// The pieces with ANSI foreground colours by step, and a legend line.
pub fn ansi(pieces: &[Piece]) -> String {
    let last = pieces.iter().map(|p| p.1).max().unwrap_or(0);
    let mut out = String::new();
    for (text, step) in pieces {
        let colour = if *step < 0 { 240 } else { RAMP[((fraction(*step, last) * (RAMP.len() - 1) as f64).round()) as usize] };
        out.push_str(&format!("\x1b[38;5;{colour}m{}", printable(text)));
    }
    out.push_str("\x1b[0m\n");
    let legend: String = RAMP.iter().map(|c| format!("\x1b[38;5;{c}m█")).collect();
    out.push_str(&format!("step 0 {legend}\x1b[0m step {last}\n"));
    out
}

/// Text made safe inside HTML elements and attributes.
pub fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// One completion as a `<pre>` of coloured spans (hover: the step), for embedding in a page.
pub fn html_pre(pieces: &[Piece]) -> String {
    let last = pieces.iter().map(|p| p.1).max().unwrap_or(0);
    let mut out = String::from("<pre class=\"order\">");
    for (text, step) in pieces {
        let style = if *step < 0 { "color:#999".to_string() } else { format!("background:hsl({:.0},75%,82%)", 240.0 * (1.0 - fraction(*step, last))) };
        let label = if *step < 0 { "filled after the answer".to_string() } else { format!("step {step}") };
        out.push_str(&format!("<span style=\"{style}\" title=\"{label}\">{}</span>", html_escape(text)));
    }
    out.push_str("</pre>");
    out
}

/// One section per completion: `(title, pieces)`; a page with no external resources.
pub fn html(sections: &[(String, Vec<Piece>)]) -> String {
    let mut body = String::new();
    for (title, pieces) in sections {
        body.push_str(&format!("<h2>{}</h2>\n{}\n", html_escape(title), html_pre(pieces)));
    }
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>decode order</title>\n<style>body{{font-family:sans-serif;margin:2em}}pre{{font-size:14px;line-height:1.5;white-space:pre-wrap}}</style></head>\n<body><p>Each token is coloured by the denoising step that committed it: blue early, red late; grey: pad filled after the answer. Hover for the step.</p>\n{body}</body></html>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_follow_the_steps_and_html_is_escaped() {
        let pieces = vec![("a".to_string(), 0), ("<b>".to_string(), 5), ("c".to_string(), 10), ("".to_string(), -1)];
        let text = ansi(&pieces);
        assert!(text.starts_with("\x1b[38;5;21ma\x1b[38;5;46m<b>\x1b[38;5;196mc\x1b[38;5;240m"), "{text:?}");
        let page = html(&[("sample & 1".into(), pieces)]);
        assert!(page.contains("sample &amp; 1") && page.contains("&lt;b&gt;") && page.contains("title=\"step 10\""));
        assert!(!page.contains("<script") && !page.contains("http"), "self-contained");
        assert_eq!(printable("a\x1b[2Jb\n\tc"), "a\\u{1b}[2Jb\n\tc");
    }
}
