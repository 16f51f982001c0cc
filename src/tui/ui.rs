//! Drawing the TUI: the output log, the values in scope, the preview, the input area and the status bar.
use super::app::{App, LineKind};
use crate::session::Image;
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, List, ListItem, ListState, Paragraph, Widget, Wrap};
use ratatui::Frame;

/// An image drawn with upper-half blocks (the shared sampler in `term::halfblocks`), scaled to fit and centred;
/// the second field is the terminal's cell in pixels (`App::halfblock_cell`), which keeps the aspect ratio.
pub struct Halfblocks<'a>(pub &'a Image, pub (f64, f64));

impl Widget for Halfblocks<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let (img, cell) = (self.0, self.1);
        let (cols, rows) = (area.width as usize, area.height as usize);
        let c = crate::term::halfblocks::sample(&img.rgb, img.width, img.height, cols, rows, cell);
        if c.cols == 0 {
            return;
        }
        let (x0, y0) = (area.x + (area.width - c.cols as u16) / 2, area.y + (area.height - c.rows as u16) / 2);
        for (i, (t, b)) in c.cells.iter().enumerate() {
            let (cx, cy) = ((i % c.cols) as u16, (i / c.cols) as u16);
            if let Some(cell) = buf.cell_mut((x0 + cx, y0 + cy)) {
                cell.set_symbol("▀").set_fg(Color::Rgb(t[0], t[1], t[2])).set_bg(Color::Rgb(b[0], b[1], b[2]));
            }
        }
    }
}

/// Draw through the terminal's graphics protocol, re-encoding only when the image or the pane changes.
fn protocol_image(f: &mut Frame, g: &super::app::Graphics, img: &Image, area: Rect, cell: (f64, f64)) {
    let key = std::sync::Arc::as_ptr(&img.rgb) as usize;
    let mut st = g.state.borrow_mut();
    if st.as_ref().is_none_or(|(k, _)| *k != key) {
        let Some(rgb) = image::RgbImage::from_raw(img.width as u32, img.height as u32, img.rgb.as_ref().clone()) else {
            f.render_widget(Halfblocks(img, cell), area);
            return;
        };
        *st = Some((key, g.picker.new_resize_protocol(image::DynamicImage::ImageRgb8(rgb))));
    }
    if let Some((_, proto)) = st.as_mut() {
        // scaled to fill the pane's limiting side (Fit never enlarges: a 128² image stayed a small patch), the aspect
        // ratio kept through the terminal's real cell size (`term::cell_size`)
        let widget = ratatui_image::StatefulImage::default().resize(ratatui_image::Resize::Scale(None));
        f.render_stateful_widget(widget, area, proto);
    }
}

/// A plot with ratatui's Chart: the points joined by lines, axes labelled with their ranges.
fn chart(f: &mut Frame, p: &crate::render::plot::Plot, area: Rect) {
    use ratatui::symbols::Marker;
    use ratatui::widgets::{Axis, Chart, Dataset, GraphType};
    let ((x0, x1), (y0, y1)) = p.bounds();
    let label = |v: f64| Span::raw(format!("{v:.3}"));
    let data = Dataset::default()
        .marker(Marker::Braille)
        .graph_type(GraphType::Line)
        .style(Style::default().fg(Color::Cyan))
        .data(&p.points);
    let chart = Chart::new(vec![data])
        .block(Block::default().title(p.title.clone()))
        .x_axis(Axis::default().title(p.x_label.clone()).bounds([x0, x1]).labels(vec![label(x0), label(x1)]))
        .y_axis(Axis::default().title(p.y_label.clone()).bounds([y0, y1]).labels(vec![label(y0), label(y1)]));
    f.render_widget(chart, area);
}

pub fn draw(f: &mut Frame, app: &App) {
    let area = f.area();
    if area.width < 10 || area.height < 5 {
        f.render_widget(Paragraph::new("terminal too small"), area);
        return;
    }
    let input_lines = app.input.lines().count().max(1) + usize::from(app.input.ends_with('\n'));
    let input_h = (input_lines as u16 + 2).clamp(3, (area.height / 3).max(3));
    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints([Constraint::Min(3), Constraint::Length(input_h), Constraint::Length(1)])
        .split(area);
    let cols = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Percentage(58), Constraint::Percentage(42)])
        .split(rows[0]);
    let right = Layout::default()
        .direction(Direction::Vertical)
        .constraints([Constraint::Percentage(40), Constraint::Percentage(60)])
        .split(cols[1]);

    // output log, bottom-anchored
    let log_block = Block::default().borders(Borders::ALL).title(" output ");
    let inner_h = log_block.inner(cols[0]).height as usize;
    let end = app.log.len().saturating_sub(app.scroll);
    let start = end.saturating_sub(inner_h.max(1) * 4);
    let lines: Vec<Line> = app.log[start..end]
        .iter()
        .map(|(k, t)| {
            let style = match k {
                LineKind::Input => Style::default().fg(Color::Cyan),
                LineKind::Output => Style::default(),
                LineKind::Error => Style::default().fg(Color::Red),
                LineKind::Info => Style::default().fg(Color::DarkGray),
            };
            Line::from(Span::styled(t.clone(), style))
        })
        .collect();
    let para = Paragraph::new(lines).block(log_block).wrap(Wrap { trim: false });
    let total = para.line_count(cols[0].width.saturating_sub(2)) as u16;
    let visible = cols[0].height.saturating_sub(2);
    f.render_widget(para.scroll((total.saturating_sub(visible), 0)), cols[0]);

    // values in scope
    let items: Vec<ListItem> = app
        .values
        .iter()
        .map(|v| {
            ListItem::new(Line::from(vec![
                Span::styled(format!("{} ", v.name), Style::default().add_modifier(Modifier::BOLD)),
                Span::styled(format!("{}: ", v.kind), Style::default().fg(Color::Yellow)),
                Span::raw(v.text.clone()),
            ]))
        })
        .collect();
    let mut state = ListState::default().with_selected(app.selected);
    f.render_stateful_widget(
        List::new(items)
            .block(Block::default().borders(Borders::ALL).title(values_title(app, right[0].height.saturating_sub(2))))
            .highlight_style(Style::default().add_modifier(Modifier::REVERSED)),
        right[0],
        &mut state,
    );

    // preview
    let title = match &app.latents {
        Some((step, total, _)) if app.job.is_some() => format!(" latents, step {step}/{total} "),
        _ => " preview ".to_string(),
    };
    let pblock = Block::default().borders(Borders::ALL).title(title);
    let pin = pblock.inner(right[1]);
    f.render_widget(pblock, right[1]);
    let live = app.latents.as_ref().filter(|_| app.job.is_some()).map(|(_, _, i)| i);
    if let (true, Some(img)) = (app.preview, live) {
        // a running job's latents: halfblocks (cheap, redrawn every few steps)
        f.render_widget(Halfblocks(img, app.halfblock_cell()), pin);
    } else if let (true, Some(p), None) = (app.preview, &app.plot, app.selected) {
        chart(f, p, pin);
    } else {
        match (app.preview, app.shown_image()) {
            (true, Some(img)) if pin.height > 1 => {
                let img_area = Rect { height: pin.height - 1, ..pin };
                match &app.graphics {
                    Some(g) => protocol_image(f, g, img, img_area, app.halfblock_cell()),
                    None => f.render_widget(Halfblocks(img, app.halfblock_cell()), img_area),
                }
                let saved = img
                    .path
                    .as_ref()
                    .map(|p| format!("saved: {}", p.display()))
                    .unwrap_or_else(|| format!("{}×{} seed {} (not saved)", img.width, img.height, img.seed));
                f.render_widget(
                    Paragraph::new(saved).style(Style::default().fg(Color::Green)),
                    Rect { y: pin.y + pin.height - 1, height: 1, ..pin },
                );
            }
            (false, Some(img)) => {
                let saved = img
                    .path
                    .as_ref()
                    .map(|p| format!("preview off — saved: {}", p.display()))
                    .unwrap_or_else(|| "preview off (:preview on)".into());
                f.render_widget(Paragraph::new(saved).wrap(Wrap { trim: true }), pin);
            }
            _ => f.render_widget(Paragraph::new("no image yet").style(Style::default().fg(Color::DarkGray)), pin),
        }
    }

    // input
    let title =
        if app.completions.is_empty() { " hl> ".to_string() } else { format!(" {} ", app.completions.join("  ")) };
    let iblock = Block::default().borders(Borders::ALL).title(title);
    let iin = iblock.inner(rows[1]);
    let before = &app.input[..app.cursor];
    let (cy, cx) = (
        before.matches('\n').count() as u16,
        before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) as u16,
    );
    // a line longer than the box scrolls sideways with the cursor (and a tall input upwards)
    let (sy, sx) = ((cy + 1).saturating_sub(iin.height), (cx + 1).saturating_sub(iin.width));
    f.render_widget(Paragraph::new(app.input.as_str()).block(iblock).scroll((sy, sx)), rows[1]);
    if app.job.is_none() {
        f.set_cursor_position((iin.x + cx - sx, iin.y + cy - sy));
    }

    // status bar
    let job = app.job.as_ref().map(|j| format!("job: {}", j.progress())).unwrap_or_else(|| "ready".into());
    let models = if app.models.is_empty() { "none".to_string() } else { app.models.join(", ") };
    let gfx = app.graphics.as_ref().map(|g| g.name()).unwrap_or("halfblocks");
    // the job first: on a narrow terminal the tail is cut
    let status = format!(" {job} · {} · models: {} · mem {} · preview {gfx}", app.device, models, app.memory);
    f.render_widget(Paragraph::new(status).style(Style::default().bg(Color::Blue).fg(Color::White)), rows[2]);

    if app.help {
        let w = area.width.saturating_sub(4).min(100);
        let h = area.height.saturating_sub(2);
        let r = Rect { x: area.x + (area.width - w) / 2, y: area.y + 1, width: w, height: h };
        // keys and commands first: the API list below may run past the bottom of a small terminal
        let text = format!(
            "keys: Enter run · Alt/Shift-Enter newline · Tab complete · ↑/↓ history · Alt-↑/↓ select a value · PgUp/PgDn scroll · Ctrl-C stop the job · Ctrl-D quit · Esc closes this help\n\
             commands: {}\n\n{}",
            crate::front::input::COMMANDS,
            crate::script::api::help(None)
        );
        f.render_widget(Clear, r);
        f.render_widget(
            Paragraph::new(text)
                .wrap(Wrap { trim: false })
                .block(Block::default().borders(Borders::ALL).title(" help ")),
            r,
        );
    }
}

/// The values pane's title: how to move, and how many values lie beyond the pane (Alt-↑/↓ scrolls to them).
fn values_title(app: &App, rows: u16) -> String {
    let (n, rows) = (app.values.len(), rows as usize);
    match n > rows {
        true => format!(" values +{} more (Alt-↑/↓) ", n - rows),
        false => " values (Alt-↑/↓) ".to_string(),
    }
}
