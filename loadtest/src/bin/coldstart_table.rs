//! `coldstart-table ROWS`: the medians tables of `make coldstart` from its rows file (one
//! `table=cold|cap alg=NAME round=N key=value ...` line per run).

use opr_loadtest::coldstart::{medians_table, CAP_COLUMNS, COLD_COLUMNS};
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: coldstart-table ROWS_FILE");
        return ExitCode::from(2);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("coldstart-table: {path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rows: Vec<String> = text.lines().map(str::to_string).collect();
    let has = |table: &str| rows.iter().any(|r| r.contains(&format!("table={table} ")));
    if has("cold") {
        println!("{}", medians_table(&rows, "cold", COLD_COLUMNS));
    }
    if has("cap") {
        println!("{}", medians_table(&rows, "cap", CAP_COLUMNS));
    }
    ExitCode::SUCCESS
}
