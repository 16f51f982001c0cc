//! Loss logs as the trainers write them (`log.csv` of `hyperlora train`, `<name>.loss.csv` of `finetune`): a
//! header naming the columns (`step` and `loss` among them), then one row per step.
use crate::error::{Error, Result};
use std::path::Path;

/// The `step` and `loss` columns of a loss log.
pub fn read_loss_csv(path: &Path) -> Result<(Vec<f64>, Vec<f64>)> {
    let text = crate::files::read_text(path).map_err(|e| Error::io(path, e))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').map(str::trim).collect();
    let col = |name: &str| {
        header.iter().position(|h| *h == name).ok_or_else(|| {
            Error::invalid(path, format!("is not a loss log: its header has no `{name}` column (step,loss,…)"))
        })
    };
    let (s, l) = (col("step")?, col("loss")?);
    let (mut steps, mut losses) = (Vec::new(), Vec::new());
    for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let cells: Vec<&str> = line.split(',').collect();
        let num = |c: usize| cells.get(c).and_then(|v| v.trim().parse::<f64>().ok()).filter(|v| v.is_finite());
        match (num(s), num(l)) {
            (Some(a), Some(b)) => {
                steps.push(a);
                losses.push(b);
            }
            _ => return Err(Error::invalid(path, format!("line {}: no number under step or loss", i + 2))),
        }
    }
    if steps.is_empty() {
        return Err(Error::invalid(path, "holds no steps yet"));
    }
    Ok((steps, losses))
}
