//! Printing results: aligned tables for people, JSON or YAML for scripts, bare ids with `--quiet`.

use serde_json::Value;

use super::client::CliError;
use super::Format;

/// A table column: its header and the dotted path of the field it shows.
pub type Column = (&'static str, &'static str);

pub struct Output {
    pub format: Format,
    pub quiet: bool,
}

impl Output {
    pub fn new(format: Format, quiet: bool) -> Output {
        Output { format, quiet }
    }

    /// Structured output wins over `--quiet`: asking for JSON and getting ids would surprise a script.
    pub fn structured(&self) -> bool {
        self.format != Format::Table
    }

    pub fn data(&self, v: &Value) -> Result<(), CliError> {
        match self.format {
            Format::Json => {
                let text = serde_json::to_string_pretty(v).map_err(|e| CliError::Other(e.to_string()))?;
                println!("{text}");
            }
            Format::Yaml => {
                let text = serde_yaml::to_string(v).map_err(|e| CliError::Other(e.to_string()))?;
                print!("{text}");
            }
            Format::Table => println!("{}", cell(v)),
        }
        Ok(())
    }

    pub fn list(&self, items: &[Value], columns: &[Column], id_field: &str) -> Result<(), CliError> {
        if self.structured() {
            return self.data(&Value::Array(items.to_vec()));
        }
        if self.quiet {
            for item in items {
                println!("{}", cell(field(item, id_field)));
            }
            return Ok(());
        }
        let header: Vec<String> = columns.iter().map(|(h, _)| h.to_string()).collect();
        let rows: Vec<Vec<String>> =
            items.iter().map(|item| columns.iter().map(|(_, path)| cell(field(item, path))).collect()).collect();
        print!("{}", table(&header, &rows));
        Ok(())
    }

    /// One resource: a two-column list of the given fields for people.
    pub fn object(&self, v: &Value, fields: &[Column], id_field: &str) -> Result<(), CliError> {
        if self.structured() {
            return self.data(v);
        }
        if self.quiet {
            println!("{}", cell(field(v, id_field)));
            return Ok(());
        }
        let width = fields.iter().map(|(h, _)| h.chars().count()).max().unwrap_or(0);
        for (label, path) in fields {
            println!("{:<width$}  {}", format!("{label}:"), cell(field(v, path)), width = width + 1);
        }
        Ok(())
    }

    /// A line for people that scripts asking for ids or data do not want on stdout.
    pub fn note(&self, line: &str) {
        if self.structured() || self.quiet {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
}

pub fn field<'a>(v: &'a Value, path: &str) -> &'a Value {
    let mut cur = v;
    for part in path.split('.') {
        cur = cur.get(part).unwrap_or(&Value::Null);
    }
    cur
}

pub fn str_field(v: &Value, path: &str) -> String {
    cell(field(v, path))
}

/// One value as a table cell: maps as `k=v,...`, lists comma-separated, nothing as `-`.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        Value::Number(n) => n.to_string(),
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        Value::Object(m) if m.is_empty() => "-".into(),
        Value::Object(m) => m.iter().map(|(k, v)| format!("{k}={}", cell(v))).collect::<Vec<_>>().join(","),
    }
}

pub fn table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(header).chain(rows.iter().map(Vec::as_slice)) {
        let mut line = String::new();
        for (i, (c, w)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(c);
            } else {
                line.push_str(c);
                line.push_str(&" ".repeat(w - c.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_on_the_widest_cell() {
        let t =
            table(&["ID".into(), "NAME".into()], &[vec!["1".into(), "web".into()], vec!["1234".into(), "db".into()]]);
        assert_eq!(t, "ID    NAME\n1     web\n1234  db\n");
    }

    #[test]
    fn cells_render_maps_lists_and_nothing() {
        assert_eq!(cell(&serde_json::json!({"a": "1", "b": "2"})), "a=1,b=2");
        assert_eq!(cell(&serde_json::json!(["x", "y"])), "x,y");
        assert_eq!(cell(&Value::Null), "-");
    }
}
