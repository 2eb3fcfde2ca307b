//! `xsell eval --html REPORT.html`: one self-contained page (inline SVG, no script, no external
//! file) with the metric table beside the baselines, hit@k curves, the reliability diagram, the
//! discovery figures, the ablation rows and the business measures.

use xsell_core::metrics::Metrics;

use crate::business::{Business, ReturnEffect};

/// What the page shows.
pub struct Page<'a> {
    pub dataset: &'a str,
    pub model_version: &'a str,
    pub queries: usize,
    pub train_seconds: Option<f64>,
    pub systems: &'a [(String, Metrics, f64)],
    /// (system, queries, hit@10, mrr@20, se)
    pub discovery: Vec<(String, usize, f64, f64, f64)>,
    pub business: &'a [(String, Business)],
    pub return_effect: Option<&'a ReturnEffect>,
    pub reliability_svg: Option<String>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

const COLOURS: [&str; 8] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];

/// A line chart of hit@5/10/20 per system.
fn hit_curves(systems: &[(String, Metrics, f64)]) -> String {
    let (w, h, pad) = (520.0, 300.0, 44.0);
    let max = systems.iter().map(|(_, m, _)| m.hit20).fold(0.05f64, f64::max).min(1.0);
    let x = |i: usize| pad + i as f64 * (w - 2.0 * pad - 120.0) / 2.0;
    let y = |v: f64| h - pad - v / max * (h - 2.0 * pad);
    let mut s = format!(r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#);
    s += &format!(r#"<line x1="{pad}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#, h - pad, x(2), h - pad);
    s += &format!(r#"<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{}" stroke="black"/>"#, h - pad);
    for (i, k) in ["5", "10", "20"].iter().enumerate() {
        s += &format!(r#"<text x="{}" y="{}" text-anchor="middle">k = {k}</text>"#, x(i), h - pad + 16.0);
    }
    for t in 0..=4 {
        let v = max * f64::from(t) / 4.0;
        s += &format!(r#"<text x="{}" y="{}" text-anchor="end">{v:.2}</text>"#, pad - 4.0, y(v) + 4.0);
    }
    for (n, (name, m, _)) in systems.iter().enumerate() {
        let c = COLOURS[n % COLOURS.len()];
        let pts: Vec<String> = [m.hit5, m.hit10, m.hit20].iter().enumerate().map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v))).collect();
        s += &format!(r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2"/>"#, pts.join(" "));
        s += &format!(r#"<text x="{}" y="{}" fill="{c}">{}</text>"#, x(2) + 8.0, 20.0 + 14.0 * n as f64, esc(name));
    }
    s + r#"<text x="12" y="150" transform="rotate(-90 12 150)" text-anchor="middle">hit@k</text></svg>"#
}

/// Horizontal bars of one measure per system.
fn bars(title: &str, rows: &[(String, f64)]) -> String {
    let (w, bar, pad) = (520.0, 18.0, 170.0);
    let h = 30.0 + rows.len() as f64 * (bar + 6.0);
    let max = rows.iter().map(|r| r.1).fold(1e-9f64, f64::max);
    let mut s = format!(r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#);
    s += &format!(r#"<text x="4" y="14" font-weight="bold">{}</text>"#, esc(title));
    for (i, (name, v)) in rows.iter().enumerate() {
        let top = 24.0 + i as f64 * (bar + 6.0);
        let len = v / max * (w - pad - 60.0);
        s += &format!(r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#, pad - 6.0, top + 13.0, esc(name));
        s += &format!(r#"<rect x="{pad}" y="{top}" width="{len:.1}" height="{bar}" fill="{}"/>"#, COLOURS[i % COLOURS.len()]);
        s += &format!(r#"<text x="{:.1}" y="{}">{v:.4}</text>"#, pad + len + 4.0, top + 13.0);
    }
    s + "</svg>"
}

fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = String::from("<table><tr>");
    for h in head {
        s += &format!("<th>{}</th>", esc(h));
    }
    s += "</tr>";
    for r in rows {
        s += "<tr>";
        for (i, c) in r.iter().enumerate() {
            s += &format!("<td{}>{}</td>", if i == 0 { " class=\"name\"" } else { "" }, esc(c));
        }
        s += "</tr>";
    }
    s + "</table>"
}

fn opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "–".into())
}

impl Page<'_> {
    pub fn render(&self) -> String {
        let main: Vec<&(String, Metrics, f64)> =
            self.systems.iter().filter(|(n, _, _)| !n.starts_with("only ") && !n.starts_with("w/o ")).collect();
        let ablation: Vec<&(String, Metrics, f64)> =
            self.systems.iter().filter(|(n, _, _)| n.starts_with("only ") || n.starts_with("w/o ")).collect();
        let metric_rows = |v: &[&(String, Metrics, f64)]| -> Vec<Vec<String>> {
            v.iter()
                .map(|(n, m, secs)| {
                    vec![
                        n.clone(),
                        format!("{:.4}", m.hit5),
                        format!("{:.4}", m.hit10),
                        format!("{:.4}", m.hit20),
                        format!("{:.4}", m.mrr20),
                        format!("{:.4}", m.ndcg10),
                        format!("{:.4}", m.coverage10),
                        opt(m.novel_hit10),
                        opt(m.cross_category_hit10),
                        opt(m.same_category_share10),
                        opt(m.ece),
                        format!("{secs:.2}"),
                    ]
                })
                .collect()
        };
        let head =
            ["system", "hit@5", "hit@10", "hit@20", "mrr@20", "ndcg@10", "cov@10", "novel@10", "cross@10", "samecat", "ece", "rank s"];
        let mut body = format!(
            "<h1>xsell evaluation: {}</h1><p>{} queries; model {}{}</p>",
            esc(self.dataset),
            self.queries,
            esc(self.model_version),
            self.train_seconds.map(|t| format!("; training {t:.1} s")).unwrap_or_default()
        );
        body += "<h2>Metrics beside the baselines</h2>";
        body += &table(&head, &metric_rows(&main));
        let owned: Vec<(String, Metrics, f64)> = main.iter().map(|s| (*s).clone()).collect();
        body += "<h2>hit@k</h2>";
        body += &hit_curves(&owned);
        if let Some(svg) = &self.reliability_svg {
            body += "<h2>Reliability (top-10 offers)</h2>";
            body += svg;
        }
        if !self.discovery.is_empty() {
            body += &format!("<h2>Discovery ({} novel-target queries, the customer's past items excluded)</h2>", self.discovery[0].1);
            let rows: Vec<Vec<String>> = self
                .discovery
                .iter()
                .map(|(n, _, h, m, se)| vec![n.clone(), format!("{h:.4}"), format!("±{se:.4}"), format!("{m:.4}")])
                .collect();
            body += &table(&["system", "hit@10", "se", "mrr@20"], &rows);
            body += &bars("discovery hit@10", &self.discovery.iter().map(|d| (d.0.clone(), d.2)).collect::<Vec<_>>());
        }
        if !ablation.is_empty() {
            body += "<h2>Ablation</h2>";
            body += &table(&head, &metric_rows(&ablation));
            body += &bars("hit@10", &ablation.iter().map(|(n, m, _)| (n.clone(), m.hit10)).collect::<Vec<_>>());
        }
        if !self.business.is_empty() {
            body += "<h2>Business measures</h2><p>Attachment: each test order's first item alone is the basket; an offer attaches when the order holds it. Leak: a substitute of a basket item in the top 10, judged by the trained model's evidence.</p>";
            let rows: Vec<Vec<String>> = self
                .business
                .iter()
                .map(|(n, b)| {
                    let mut r = vec![n.clone()];
                    r.extend(b.attachment.iter().map(|(_, v)| format!("{v:.4}")));
                    r.extend([
                        format!("{:.3}", b.realized_uplift3),
                        opt(b.expected_uplift3),
                        opt(b.substitute_leak10),
                        opt(b.substitute_offers10),
                        opt(b.same_kind10),
                    ]);
                    r
                })
                .collect();
            body +=
                &table(&["system", "attach@3", "attach@10", "value@3", "exp.value@3", "leak@10", "substitute offers", "same kind"], &rows);
            body += &bars(
                "attachment rate@3",
                &self.business.iter().map(|(n, b)| (n.clone(), b.attachment.first().map_or(0.0, |a| a.1))).collect::<Vec<_>>(),
            );
            body += &bars(
                "substitute leak@10",
                &self.business.iter().map(|(n, b)| (n.clone(), b.substitute_leak10.unwrap_or(0.0))).collect::<Vec<_>>(),
            );
        }
        if let Some(r) = self.return_effect {
            body += &format!("<h2>Return-aware rules (cart policy, {} queries)</h2>", r.queries);
            let rows: Vec<Vec<String>> = r
                .variants
                .iter()
                .map(|v| {
                    vec![
                        v.name.to_owned(),
                        format!("{:.4}", v.suppressed),
                        format!("{:.3}", v.offers_per_query),
                        format!("{:.4}", v.hit),
                        format!("{:.4}", v.offered_item_return_rate),
                        format!("{:.4}", v.offers_to_returners),
                        format!("{:.4}", v.hits_returned),
                        format!("{:.3}", v.expected_kept_value),
                    ]
                })
                .collect();
            body += &table(
                &["policy", "suppressed", "offers", "hit", "item return rate", "to returners", "hits returned", "kept value"],
                &rows,
            );
        }
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>xsell eval: {}</title><style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td.name{{text-align:left}}svg{{display:block;margin:1em 0}}</style></head><body>{body}</body></html>\n",
            esc(self.dataset)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_self_contained_and_escapes_names() {
        let m = Metrics { hit5: 0.1, hit10: 0.2, hit20: 0.3, ..Default::default() };
        let systems = vec![("xsell".to_string(), m.clone(), 1.0), ("w/o <history>".to_string(), m, 1.0)];
        let page = Page {
            dataset: "a&b.parquet",
            model_version: "v1",
            queries: 10,
            train_seconds: Some(2.0),
            systems: &systems,
            discovery: vec![("xsell".into(), 5, 0.2, 0.1, 0.01)],
            business: &[("xsell".into(), Business { attachment: vec![(3, 0.5), (10, 0.7)], ..Default::default() })],
            return_effect: None,
            reliability_svg: Some("<svg></svg>".into()),
        }
        .render();
        assert!(page.starts_with("<!doctype html>") && page.contains("a&amp;b.parquet"));
        assert!(page.contains("w/o &lt;history&gt;") && !page.contains("<history>"));
        assert!(page.contains("<h2>Ablation</h2>") && page.contains("attach@3") && page.contains("Discovery"));
        assert!(!page.contains("<script") && !page.contains("src=\"http"));
    }
}
