//! Self-contained HTML: text escaped everywhere it is inserted, pictures embedded as data URIs,
//! so a page can be mailed or archived alone and a file or class name cannot break it.

use base64::Engine;
use std::fmt::Write as _;

/// Text made safe for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An `<img>` with the bytes embedded (`mime`: "image/png", "image/gif").
pub fn image(alt: &str, mime: &str, bytes: &[u8]) -> String {
    format!(r#"<img alt="{}" src="data:{mime};base64,{}">"#, escape(alt), base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// A page under construction: sections of escaped text, tables, pictures and preformatted text.
pub struct Page {
    title: String,
    extra_style: &'static str,
    body: String,
}

/// The look shared by difforge's pages.
pub const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2rem;max-width:62rem;color:#222} table{border-collapse:collapse;margin:0.5rem 0} td,th{border:1px solid #ccc;padding:2px 8px;text-align:right} th{background:#f4f4f4} figure{margin:1rem 0} img{max-width:100%;border:1px solid #ccc} img.pixels{image-rendering:pixelated} pre{font-size:11px;max-height:14rem;overflow:auto} .small{font-size:12px;color:#666} section{margin-bottom:2rem}";

impl Page {
    pub fn new(title: &str) -> Page {
        Page { title: title.to_string(), extra_style: "", body: String::new() }
    }

    /// With extra CSS rules after the shared ones.
    pub fn with_style(mut self, rules: &'static str) -> Page {
        self.extra_style = rules;
        self
    }

    pub fn heading(&mut self, level: u8, text: &str) -> &mut Page {
        let level = level.clamp(1, 6);
        let _ = write!(self.body, "<h{level}>{}</h{level}>", escape(text));
        self
    }

    /// A paragraph of plain text.
    pub fn paragraph(&mut self, text: &str) -> &mut Page {
        let _ = write!(self.body, "<p>{}</p>", escape(text));
        self
    }

    /// A paragraph of small print.
    pub fn note(&mut self, text: &str) -> &mut Page {
        let _ = write!(self.body, "<p class=small>{}</p>", escape(text));
        self
    }

    /// A bulleted list.
    pub fn list(&mut self, items: &[String]) -> &mut Page {
        self.body += "<ul>";
        for item in items {
            let _ = write!(self.body, "<li>{}</li>", escape(item));
        }
        self.body += "</ul>";
        self
    }

    /// A table with a header row; every cell is text.
    pub fn table(&mut self, header: &[&str], rows: &[Vec<String>]) -> &mut Page {
        self.body += "<table><tr>";
        for h in header {
            let _ = write!(self.body, "<th>{}</th>", escape(h));
        }
        self.body += "</tr>";
        for row in rows {
            self.body += "<tr>";
            for cell in row {
                let _ = write!(self.body, "<td>{}</td>", escape(cell));
            }
            self.body += "</tr>";
        }
        self.body += "</table>";
        self
    }

    /// A picture with a caption; `pixelated` keeps small images sharp when scaled up.
    pub fn figure(&mut self, alt: &str, mime: &str, bytes: &[u8], caption: &str, pixelated: bool) -> &mut Page {
        let img = image(alt, mime, bytes);
        let img = if pixelated { img.replacen("<img ", "<img class=pixels ", 1) } else { img };
        let _ = write!(self.body, "<figure>{img}<figcaption>{}</figcaption></figure>", escape(caption));
        self
    }

    /// Preformatted text (numbers, JSON) folded under a summary line.
    pub fn details(&mut self, summary: &str, text: &str) -> &mut Page {
        let _ = write!(self.body, "<details><summary>{}</summary><pre>{}</pre></details>", escape(summary), escape(text));
        self
    }

    pub fn render(&self) -> String {
        format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE} {}</style></head><body>\n<h1>{}</h1>\n{}\n</body></html>\n",
            escape(&self.title),
            self.extra_style,
            escape(&self.title),
            self.body
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_inserted_text_is_escaped() {
        let mut page = Page::new("run <b>&</b>");
        page.paragraph("a <script>").table(&["<th>"], &[vec!["\"x\"".into()]]).list(&["<li>".into()]).details("<s>", "</pre>");
        page.figure("a\"b", "image/png", &[1, 2, 3], "c<d", true);
        let html = page.render();
        for raw in ["<b>", "<script>", "<th><th>", "\"x\"", "<li><li>", "<s>", "</pre></pre>", "a\"b", "c<d"] {
            assert!(!html.contains(raw), "{raw} was not escaped in {html}");
        }
        assert!(html.contains("run &lt;b&gt;&amp;&lt;/b&gt;"));
        assert!(html.contains("class=pixels"));
        assert!(html.contains("data:image/png;base64,AQID"));
    }
}
