//! Report tables and their three renderings.

use serde_json::{Map, Value};

/// Output format of reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns.
    #[default]
    Table,
    /// A JSON array of objects.
    Json,
    /// CSV with a header row.
    Csv,
}

/// One value.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    /// Text.
    Text(String),
    /// A count.
    Int(u64),
    /// A measure.
    Float(f64),
}

impl Cell {
    /// A text cell.
    pub fn text(s: impl Into<String>) -> Cell {
        Cell::Text(s.into())
    }

    fn plain(&self) -> String {
        match self {
            Cell::Text(s) => s.clone(),
            Cell::Int(n) => n.to_string(),
            Cell::Float(f) => format!("{f:.3}"),
        }
    }

    fn json(&self) -> Value {
        match self {
            Cell::Text(s) => Value::String(s.trim().to_string()),
            Cell::Int(n) => Value::from(*n),
            Cell::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        }
    }
}

/// Named columns and rows.
#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    /// Column names (also the JSON keys and the CSV header).
    pub columns: Vec<&'static str>,
    /// Rows, one cell per column.
    pub rows: Vec<Vec<Cell>>,
}

impl Table {
    /// An empty table.
    pub fn new(columns: &[&'static str]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn push(&mut self, row: Vec<Cell>) {
        debug_assert_eq!(row.len(), self.columns.len());
        self.rows.push(row);
    }

    /// Renders the table.
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Table => self.text(),
            Format::Json => {
                let rows: Vec<Value> = self
                    .rows
                    .iter()
                    .map(|row| {
                        let object: Map<String, Value> = self
                            .columns
                            .iter()
                            .zip(row)
                            .map(|(c, v)| (c.to_string(), v.json()))
                            .collect();
                        Value::Object(object)
                    })
                    .collect();
                serde_json::to_string_pretty(&rows).expect("serialises") + "\n"
            }
            Format::Csv => {
                let mut out = csv::Writer::from_writer(Vec::new());
                out.write_record(&self.columns).expect("in memory");
                for row in &self.rows {
                    out.write_record(row.iter().map(|c| c.plain().trim().to_string()))
                        .expect("in memory");
                }
                String::from_utf8(out.into_inner().expect("in memory")).expect("utf-8")
            }
        }
    }

    fn text(&self) -> String {
        let cells: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| r.iter().map(Cell::plain).collect())
            .collect();
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|i| {
                cells
                    .iter()
                    .map(|r| r[i].len())
                    .chain([self.columns[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let numeric = |i: usize| {
            self.rows
                .first()
                .is_some_and(|r| !matches!(r[i], Cell::Text(_)))
        };
        let line = |values: Vec<String>| {
            values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    if numeric(i) {
                        format!("{v:>w$}", w = widths[i])
                    } else {
                        format!("{v:<w$}", w = widths[i])
                    }
                })
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        };
        let mut out = line(self.columns.iter().map(|c| c.to_uppercase()).collect()) + "\n";
        for row in cells {
            out += &(line(row) + "\n");
        }
        out
    }
}
