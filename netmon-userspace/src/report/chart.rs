//! `report chart`: bytes per interval, stacked for the top pairs, as SVG or PNG.

use std::{collections::BTreeMap, net::IpAddr, path::Path, sync::Once};

use image::ImageEncoder as _;
use plotters::prelude::*;

use super::{timestamp, ReportError};
use crate::{console::human_bytes, logs::detail::DetailRecord};

static FONT: Once = Once::new();

/// Draws the chart into `out` (`.svg` or `.png`).
pub fn draw(
    records: &[DetailRecord],
    interval: std::time::Duration,
    top: usize,
    out: &Path,
) -> Result<(), ReportError> {
    let (labels, series, seconds) = stack(records, interval, top)?;
    FONT.call_once(|| {
        // The font ships inside the binary: charts render the same on any server.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
    // Drawn in memory, then written as a new file renamed into place: never
    // through a link someone planted at `out`.
    const SIZE: (u32, u32) = (1100, 600);
    let bytes = match out.extension().and_then(|e| e.to_str()) {
        Some("svg") => {
            let mut svg = String::new();
            render(
                SVGBackend::with_string(&mut svg, SIZE).into_drawing_area(),
                &labels,
                &series,
                seconds,
            )?;
            svg.into_bytes()
        }
        Some("png") => {
            let mut rgb = vec![0u8; SIZE.0 as usize * SIZE.1 as usize * 3];
            render(
                BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area(),
                &labels,
                &series,
                seconds,
            )?;
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

/// Per series (top pairs, then "other"), cumulative bytes per bin, and the bin length in seconds.
type Stack = (Vec<String>, Vec<Vec<u64>>, f64);

fn stack(
    records: &[DetailRecord],
    interval: std::time::Duration,
    top: usize,
) -> Result<Stack, ReportError> {
    let t0 = timestamp(&records[0].start)?.as_nanosecond();
    let step = interval.as_nanos().max(1) as i128;
    let mut per_bin: BTreeMap<i128, BTreeMap<(IpAddr, IpAddr), u64>> = BTreeMap::new();
    let mut totals: BTreeMap<(IpAddr, IpAddr), u64> = BTreeMap::new();
    for r in records {
        let bin = (timestamp(&r.start)?.as_nanosecond() - t0) / step;
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
    Ok((labels, series, step as f64 / 1e9))
}

fn render<DB: DrawingBackend>(
    area: DrawingArea<DB, plotters::coord::Shift>,
    labels: &[String],
    series: &[Vec<u64>],
    seconds: f64,
) -> Result<(), ReportError>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| ReportError::Draw(format!("{e:?}"));
    area.fill(&WHITE).map_err(err)?;
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
    chart
        .configure_mesh()
        .x_desc(format!("seconds (intervals of {seconds} s)"))
        .y_desc("bytes")
        .y_label_formatter(&|v| human_bytes(*v))
        .draw()
        .map_err(err)?;
    // Draw the tallest (cumulative) layer first, so each lower layer paints over it.
    for (i, cumulative) in series.iter().enumerate().rev() {
        let color = Palette99::pick(i).mix(0.9);
        let points = cumulative.iter().enumerate().flat_map(|(bin, bytes)| {
            let (from, to) = (bin as f64 * seconds, (bin + 1) as f64 * seconds);
            [(from, *bytes as f64), (to, *bytes as f64)]
        });
        chart
            .draw_series(AreaSeries::new(points, 0.0, color.filled()))
            .map_err(err)?
            .label(labels[i].clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)?;
    area.present().map_err(err)?;
    Ok(())
}
