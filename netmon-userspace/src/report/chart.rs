//! Charts as SVG or PNG: `report chart`'s bytes per interval, stacked for
//! the top pairs, and `history chart`'s bars per day or month.

use std::{collections::BTreeMap, net::IpAddr, path::Path, sync::Once};

use image::ImageEncoder as _;
use jiff::Timestamp;
use plotters::{
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use super::{timestamp, ReportError};
use crate::{console::human_bytes, logs::detail::DetailRecord};

static FONT: Once = Once::new();

/// Every chart's size in pixels.
pub const SIZE: (u32, u32) = (1100, 600);

/// A chart that draws on any plotters backend: SVG or PNG.
trait Picture {
    fn render<DB: DrawingBackend>(
        &self,
        area: DrawingArea<DB, plotters::coord::Shift>,
    ) -> Result<(), ReportError>
    where
        DB::ErrorType: 'static;
}

/// Draws the chart into `out` (`.svg` or `.png`).
pub fn draw(
    records: &[DetailRecord],
    interval: std::time::Duration,
    top: usize,
    out: &Path,
) -> Result<(), ReportError> {
    write(&stack(records, interval, top)?, out)
}

/// One bar pair of [`bars`]: a period's bytes received and sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bar {
    /// The period, as the axis names it.
    pub label: String,
    /// Bytes received.
    pub received: u64,
    /// Bytes sent.
    pub sent: u64,
}

/// Draws bars of bytes received and sent per period (day or month, as
/// vnstati does) into `out` (`.svg` or `.png`), under `title`.
pub fn bars(bars: &[Bar], title: &str, out: &Path) -> Result<(), ReportError> {
    write(
        &Bars {
            bars,
            title: title.to_string(),
        },
        out,
    )
}

/// Renders `picture` in memory, then writes it as a new file renamed into
/// place: never through a link someone planted at `out`.
fn write(picture: &impl Picture, out: &Path) -> Result<(), ReportError> {
    FONT.call_once(|| {
        // The font ships inside the binary: charts render the same on any server.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
    let bytes = match out.extension().and_then(|e| e.to_str()) {
        Some("svg") => {
            let mut svg = String::new();
            picture.render(SVGBackend::with_string(&mut svg, SIZE).into_drawing_area())?;
            svg.into_bytes()
        }
        Some("png") => {
            let mut rgb = vec![0u8; SIZE.0 as usize * SIZE.1 as usize * 3];
            picture.render(BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area())?;
            let mut png = Vec::new();
            image::codecs::png::PngEncoder::new(&mut png).write_image(
                &rgb,
                SIZE.0,
                SIZE.1,
                image::ColorType::Rgb8,
            )?;
            png
        }
        _ => {
            return Err(ReportError::ChartFormat {
                path: out.to_path_buf(),
            })
        }
    };
    crate::logs::atomic::write(out, &bytes, 0o644)?;
    Ok(())
}

/// The height of a legend row, in pixels.
const LEGEND_ROW: u32 = 22;

/// Splits off a strip below the chart for a legend of `entries` in two
/// columns, so that it never covers the data; returns the chart's area.
fn with_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    entries: &[(String, RGBAColor)],
) -> Result<DrawingArea<DB, plotters::coord::Shift>, ReportError>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| ReportError::Draw(format!("{e:?}"));
    let rows = entries.len().div_ceil(2) as u32;
    let (_, height) = area.dim_in_pixel();
    let (chart, legend) = area.split_vertically(height - rows * LEGEND_ROW - 8);
    let (width, _) = legend.dim_in_pixel();
    let column = (width as i32 - 32) / 2;
    for (i, (label, color)) in entries.iter().enumerate() {
        let x = 16 + column * (i as i32 % 2);
        let y = (i as i32 / 2) * LEGEND_ROW as i32 + 4;
        legend
            .draw(&Rectangle::new(
                [(x, y + 3), (x + 14, y + 17)],
                color.filled(),
            ))
            .map_err(err)?;
        legend
            .draw(&Text::new(
                label.as_str(),
                (x + 22, y + 2),
                ("sans-serif", 16),
            ))
            .map_err(err)?;
    }
    Ok(chart)
}

/// The bars' chart.
struct Bars<'a> {
    bars: &'a [Bar],
    title: String,
}

impl Picture for Bars<'_> {
    fn render<DB: DrawingBackend>(
        &self,
        area: DrawingArea<DB, plotters::coord::Shift>,
    ) -> Result<(), ReportError>
    where
        DB::ErrorType: 'static,
    {
        let err = |e: DrawingAreaErrorKind<DB::ErrorType>| ReportError::Draw(format!("{e:?}"));
        area.fill(&WHITE).map_err(err)?;
        let colors = [GREEN.mix(0.8), BLUE.mix(0.8)];
        let area = with_legend(
            &area,
            &[
                ("received (in)".to_string(), colors[0]),
                ("sent (out)".to_string(), colors[1]),
            ],
        )?;
        let peak = self
            .bars
            .iter()
            .map(|b| b.received.max(b.sent))
            .max()
            .unwrap_or(1)
            .max(1);
        let n = self.bars.len().max(1);
        let mut chart = ChartBuilder::on(&area)
            .caption(&self.title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .build_cartesian_2d(0f64..n as f64, 0f64..peak as f64 * 1.05)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            // Each period is named under its bars, below.
            .x_labels(0)
            .y_desc("bytes")
            .y_label_formatter(&|v| human_bytes(*v))
            .draw()
            .map_err(err)?;
        for (i, bar) in self.bars.iter().enumerate() {
            let x = i as f64;
            for (bytes, from, color) in [(bar.received, 0.1, colors[0]), (bar.sent, 0.5, colors[1])]
            {
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x + from, 0.0), (x + from + 0.4, bytes as f64)],
                        color.filled(),
                    )))
                    .map_err(err)?;
            }
        }
        // As many names as fit (about 100 pixels each), evenly spread.
        let (left, right) = (
            chart.backend_coord(&(0.0, 0.0)),
            chart.backend_coord(&(n as f64, 0.0)),
        );
        let every = (n * 100)
            .div_ceil((right.0 - left.0).max(1) as usize)
            .max(1);
        let style = TextStyle::from(("sans-serif", 14)).pos(Pos::new(HPos::Center, VPos::Top));
        for (i, bar) in self.bars.iter().enumerate().step_by(every) {
            let (x, y) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
            area.draw(&Text::new(bar.label.as_str(), (x, y + 6), style.clone()))
                .map_err(err)?;
        }
        area.present().map_err(err)?;
        Ok(())
    }
}

/// Bytes per bin stacked by pair: per series (top pairs, then "other"),
/// cumulative bytes per bin from the first record's start.
struct Stacked {
    labels: Vec<String>,
    series: Vec<Vec<u64>>,
    /// The bin length in seconds.
    seconds: f64,
    /// The first record's start: the x axis is wall-clock time from it.
    t0: Timestamp,
}

fn stack(
    records: &[DetailRecord],
    interval: std::time::Duration,
    top: usize,
) -> Result<Stacked, ReportError> {
    let t0 = timestamp(&records[0].start)?;
    let step = interval.as_nanos().max(1) as i128;
    let mut per_bin: BTreeMap<i128, BTreeMap<(IpAddr, IpAddr), u64>> = BTreeMap::new();
    let mut totals: BTreeMap<(IpAddr, IpAddr), u64> = BTreeMap::new();
    for r in records {
        let bin = (timestamp(&r.start)?.as_nanosecond() - t0.as_nanosecond()) / step;
        for p in &r.pairs {
            *per_bin
                .entry(bin)
                .or_default()
                .entry((p.src, p.dst))
                .or_default() += p.bytes;
            *totals.entry((p.src, p.dst)).or_default() += p.bytes;
        }
    }
    let mut ranked: Vec<_> = totals.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let chosen: Vec<(IpAddr, IpAddr)> = ranked.iter().take(top).map(|(k, _)| *k).collect();
    let bins = per_bin.keys().next_back().map_or(1, |b| b + 1) as usize;
    let mut series = vec![vec![0u64; bins]; chosen.len() + 1];
    for (bin, pairs) in &per_bin {
        for (pair, bytes) in pairs {
            let s = chosen
                .iter()
                .position(|c| c == pair)
                .unwrap_or(chosen.len());
            series[s][*bin as usize] += bytes;
        }
    }
    // Cumulative from the bottom: series i is drawn up to the sum of 0..=i.
    for i in 1..series.len() {
        let (below, this) = series.split_at_mut(i);
        for (bytes, under) in this[0].iter_mut().zip(&below[i - 1]) {
            *bytes += under;
        }
    }
    let mut labels: Vec<String> = chosen.iter().map(|(s, d)| format!("{s} → {d}")).collect();
    labels.push("other pairs".into());
    Ok(Stacked {
        labels,
        series,
        seconds: step as f64 / 1e9,
        t0,
    })
}

impl Picture for Stacked {
    fn render<DB: DrawingBackend>(
        &self,
        area: DrawingArea<DB, plotters::coord::Shift>,
    ) -> Result<(), ReportError>
    where
        DB::ErrorType: 'static,
    {
        let err = |e: DrawingAreaErrorKind<DB::ErrorType>| ReportError::Draw(format!("{e:?}"));
        area.fill(&WHITE).map_err(err)?;
        let color = |i: usize| Palette99::pick(i).mix(0.9);
        let entries: Vec<(String, RGBAColor)> = self
            .labels
            .iter()
            .enumerate()
            .map(|(i, label)| (label.clone(), color(i)))
            .collect();
        let area = with_legend(&area, &entries)?;
        let (series, seconds) = (&self.series, self.seconds);
        let bins = series[0].len();
        let peak = series
            .last()
            .and_then(|s| s.iter().max().copied())
            .unwrap_or(1)
            .max(1);
        let x_end = bins as f64 * seconds;
        let mut chart = ChartBuilder::on(&area)
            .caption(
                "bytes per interval, stacked by (source → destination)",
                ("sans-serif", 22),
            )
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .build_cartesian_2d(0f64..x_end, 0f64..peak as f64 * 1.05)
            .map_err(err)?;
        // Wall-clock time in UTC, as the detail log records it: the time of
        // day, with the date once the chart spans more than a day.
        let format = if x_end < 86_400.0 {
            "%H:%M:%S"
        } else {
            "%m-%d %H:%M"
        };
        let t0 = self.t0;
        chart
            .configure_mesh()
            .x_desc(format!("time (UTC), bins of {seconds} s"))
            .x_label_formatter(&|x| {
                let at = t0 + jiff::SignedDuration::from_secs_f64(*x);
                at.strftime(format).to_string()
            })
            .y_desc("bytes")
            .y_label_formatter(&|v| human_bytes(*v))
            .draw()
            .map_err(err)?;
        // Draw the tallest (cumulative) layer first, so each lower layer paints over it.
        for (i, cumulative) in series.iter().enumerate().rev() {
            let points = cumulative.iter().enumerate().flat_map(|(bin, bytes)| {
                let (from, to) = (bin as f64 * seconds, (bin + 1) as f64 * seconds);
                [(from, *bytes as f64), (to, *bytes as f64)]
            });
            chart
                .draw_series(AreaSeries::new(points, 0.0, color(i).filled()))
                .map_err(err)?;
        }
        area.present().map_err(err)?;
        Ok(())
    }
}
