//! The import rule of docs/architecture.md, checked: every `crate::…` path in src/ goes to
//! the importing module's own layer or a lower one, top-level modules import one another in
//! no circle, and the layer table names exactly the top-level modules there are. std only.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// One `crate::x` reference: where it is and which top-level module it reaches.
struct Edge {
    file: String,
    line: usize,
    from: String,
    to: String,
}

#[test]
fn imports_run_one_way_between_the_layers_of_docs_architecture_md() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let table = fs::read_to_string(root.join("docs/architecture.md"))
        .expect("docs/architecture.md is readable");
    let layers = parse_layers(&table);
    assert!(
        !layers.is_empty(),
        "no layer table found in docs/architecture.md (it follows the `<!-- layers:` comment)"
    );
    let src = root.join("src");
    let modules = top_level_modules(&src);
    let macros = logging_macros(&src);
    let mut problems = Vec::new();
    for m in &modules {
        if !layers.contains_key(m) {
            problems.push(format!(
                "src/{m}: top-level module missing from the layer table of docs/architecture.md"
            ));
        }
    }
    for m in layers.keys() {
        if !modules.contains(m) {
            problems.push(format!(
                "docs/architecture.md: layer table names `{m}`, which is no module in src/"
            ));
        }
    }
    let mut edges = Vec::new();
    for file in rust_files(&src) {
        let rel = file.strip_prefix(root).unwrap().display().to_string();
        let Some(from) = module_of(&file, &src) else {
            continue; // lib.rs and main.rs sit above every layer
        };
        let code = strip_comments_and_strings(&fs::read_to_string(&file).unwrap());
        for (line, to) in crate_references(&code, &modules, &macros) {
            edges.push(Edge {
                file: rel.clone(),
                line,
                from: from.clone(),
                to,
            });
        }
    }
    for e in &edges {
        if e.to == e.from {
            continue;
        }
        if !modules.contains(&e.to) {
            problems.push(format!(
                "{}:{}: `{}` uses `crate::{}`, an item of lib.rs, which sits above every layer",
                e.file, e.line, e.from, e.to
            ));
            continue;
        }
        if let (Some(&lf), Some(&lt)) = (layers.get(&e.from), layers.get(&e.to)) {
            if lt > lf {
                problems.push(format!(
                    "{}:{}: `{}` (layer {lf}) imports `{}` (layer {lt}), a higher layer",
                    e.file, e.line, e.from, e.to
                ));
            }
        }
    }
    for (cycle, group) in cycles(&edges) {
        let at: Vec<String> = cycle
            .iter()
            .map(|e| format!("{} -> {} ({}:{})", e.from, e.to, e.file, e.line))
            .collect();
        problems.push(format!(
            "import cycle: {} (the modules that reach one another: {})",
            at.join(", "),
            group.join(", ")
        ));
    }
    assert!(
        problems.is_empty(),
        "{} layering problem(s) (docs/architecture.md, \"Layers\"):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

/// `module -> layer` from the rows after the `<!-- layers:` comment: `| 1 | a, b | … |`.
fn parse_layers(doc: &str) -> BTreeMap<String, u32> {
    let mut layers = BTreeMap::new();
    let rows = doc
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("<!-- layers:"))
        .skip(1)
        .skip_while(|l| !l.trim_start().starts_with('|'))
        .take_while(|l| l.trim_start().starts_with('|'));
    for row in rows {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (Some(layer), Some(names)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        let Ok(layer) = layer.parse::<u32>() else {
            continue; // the header and the `|---|` line
        };
        for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let name = name.trim_matches('`').to_string();
            assert!(
                layers.insert(name.clone(), layer).is_none(),
                "docs/architecture.md: `{name}` appears twice in the layer table"
            );
        }
    }
    layers
}

/// `src/x.rs` and `src/x/mod.rs` (not lib.rs, main.rs).
fn top_level_modules(src: &Path) -> BTreeSet<String> {
    let mut modules = BTreeSet::new();
    for entry in fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            if path.join("mod.rs").exists() {
                modules.insert(name);
            }
        } else if path.extension().is_some_and(|e| e == "rs") && name != "lib" && name != "main" {
            modules.insert(name);
        }
    }
    modules
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The top-level module a file belongs to; `None` for lib.rs and main.rs.
fn module_of(file: &Path, src: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_string_lossy();
    let name = first.trim_end_matches(".rs").to_string();
    (rel.components().count() > 1 || (name != "lib" && name != "main")).then_some(name)
}

/// The names of logging.rs's `macro_rules!`: `crate::warn!` and `use crate::{warn}` reach
/// `logging`.
fn logging_macros(src: &Path) -> BTreeSet<String> {
    let text = fs::read_to_string(src.join("logging.rs")).unwrap_or_default();
    text.split("macro_rules!")
        .skip(1)
        .filter_map(|rest| ident_at(rest.trim_start()))
        .map(str::to_string)
        .collect()
}

/// Every `crate::x` and `crate::{x, y::z}` (with `$crate`): its line and the top-level
/// module (or lib.rs item) it reaches.
fn crate_references(
    code: &str,
    modules: &BTreeSet<String>,
    macros: &BTreeSet<String>,
) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    let mut from = 0;
    while let Some(pos) = code[from..].find("crate::").map(|p| p + from) {
        from = pos + "crate::".len();
        let before = pos.checked_sub(1).map(|i| bytes[i]);
        if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_') {
            continue; // e.g. `my_crate::`
        }
        let line = code[..pos].matches('\n').count() + 1;
        let rest = code[from..].trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            for item in top_level_items(group) {
                let Some(name) = ident_at(item) else { continue };
                let bare = item[name.len()..].trim().is_empty();
                found.push((line, target(name, bare, modules, macros)));
            }
        } else if let Some(name) = ident_at(rest) {
            let is_macro = rest[name.len()..].trim_start().starts_with('!');
            found.push((line, target(name, is_macro, modules, macros)));
        }
    }
    found
}

/// A logging macro when the name is one and nothing says it is the module of that name
/// (`crate::error!` and a bare `error` in `use crate::{error, info}` are the macro;
/// `crate::error::…` is the module).
fn target(
    name: &str,
    maybe_macro: bool,
    modules: &BTreeSet<String>,
    macros: &BTreeSet<String>,
) -> String {
    if macros.contains(name) && (maybe_macro || !modules.contains(name)) {
        "logging".to_string()
    } else {
        name.to_string()
    }
}

/// The comma-separated items of a `{…}` group up to its closing brace (nested groups kept
/// whole).
fn top_level_items(group: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(group[start..i].trim());
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(group[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    items
}

fn ident_at(s: &str) -> Option<&str> {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    (end > 0).then(|| &s[..end])
}

/// The source with comments and the contents of string and char literals blanked (newlines
/// kept, so line numbers stay right): a `crate::` in a doc comment or a message is no import.
fn strip_comments_and_strings(src: &str) -> String {
    let chars: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !ident_before(&chars, i) {
            // A raw string r"…" / r#"…"#: ends at a quote followed by as many #.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            out.push('"');
            j += 1;
            while j < chars.len() {
                if chars[j] == '"' && (1..=hashes).all(|k| chars.get(j + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                out.push(blank(chars[j]));
                j += 1;
            }
            out.push('"');
            i = j;
        } else if c == '"' {
            out.push('"');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if let Some(&ch) = chars.get(i) {
                    out.push(blank(ch));
                }
                i += 1;
            }
            out.push('"');
            i += 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{…}') or a lifetime ('a): only literals blanked.
            let end = if next == Some('\\') {
                (i + 3..chars.len()).find(|&k| chars[k] == '\'')
            } else if chars.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(end) => {
                    out.push_str("' '");
                    i = end + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_before(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// The import cycles between top-level modules: for each strongly connected group of two
/// or more, one circle through it with an example reference per step, and the group.
fn cycles(edges: &[Edge]) -> Vec<(Vec<&Edge>, Vec<&str>)> {
    let mut graph: BTreeMap<&str, BTreeMap<&str, &Edge>> = BTreeMap::new();
    for e in edges.iter().filter(|e| e.from != e.to) {
        graph.entry(&e.from).or_default().entry(&e.to).or_insert(e);
    }
    let reaches = |a: &str, b: &str| -> bool {
        let mut seen = BTreeSet::new();
        let mut stack = vec![a];
        while let Some(m) = stack.pop() {
            if m == b {
                return true;
            }
            if seen.insert(m) {
                stack.extend(graph.get(m).into_iter().flat_map(|t| t.keys().copied()));
            }
        }
        false
    };
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut found = Vec::new();
    for &start in graph.keys() {
        if done.contains(start) {
            continue;
        }
        let group: BTreeSet<&str> = graph
            .keys()
            .copied()
            .filter(|&m| reaches(start, m) && reaches(m, start))
            .collect();
        done.extend(group.iter().copied());
        if group.len() < 2 {
            continue;
        }
        found.push((circle(start, &group, &graph), group.into_iter().collect()));
    }
    found
}

/// A shortest path from `start` back to itself inside `group` (breadth first).
fn circle<'a>(
    start: &'a str,
    group: &BTreeSet<&'a str>,
    graph: &BTreeMap<&'a str, BTreeMap<&'a str, &'a Edge>>,
) -> Vec<&'a Edge> {
    let mut came: BTreeMap<&str, &Edge> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(m) = queue.pop_front() {
        for (&to, &e) in graph.get(m).into_iter().flatten() {
            if !group.contains(to) || came.contains_key(to) {
                continue;
            }
            came.insert(to, e);
            if to == start {
                queue.clear();
                break;
            }
            queue.push_back(to);
        }
    }
    let mut path = Vec::new();
    let mut at = start;
    while let Some(&e) = came.get(at) {
        path.push(e);
        at = e.from.as_str();
        if at == start {
            break;
        }
    }
    path.reverse();
    path
}

/// The longest a function on the request path may be (docs/architecture.md, "Layers").
const MAX_FUNCTION_LINES: usize = 80;

/// No function of the request path (the back end and the front ends: layers 3 and 4 of the
/// table, and `admission`) is longer than `MAX_FUNCTION_LINES`, test modules excepted, so a
/// reader can follow one request through functions that fit on a screen.
#[test]
fn request_path_functions_fit_on_a_screen() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let table = fs::read_to_string(root.join("docs/architecture.md")).unwrap();
    let layers = parse_layers(&table);
    let src = root.join("src");
    let mut long = Vec::new();
    for file in rust_files(&src) {
        let Some(module) = module_of(&file, &src) else {
            continue;
        };
        let on_path = module == "admission" || matches!(layers.get(&module), Some(3 | 4));
        if !on_path {
            continue;
        }
        let rel = file.strip_prefix(root).unwrap().display().to_string();
        for (name, line, len) in function_lengths(&fs::read_to_string(&file).unwrap()) {
            if len > MAX_FUNCTION_LINES {
                long.push(format!("{rel}:{line}: fn {name} is {len} lines"));
            }
        }
    }
    assert!(
        long.is_empty(),
        "request-path functions over {MAX_FUNCTION_LINES} lines:\n  {}",
        long.join("\n  ")
    );
}

/// Each `fn` of rustfmt-formatted source outside `#[cfg(test)]` modules: its name, first
/// line and length in lines (signature to closing brace, which rustfmt puts on a line of
/// its own at the indentation of the `fn`).
fn function_lengths(src: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = src.lines().collect();
    let mut found = Vec::new();
    let mut skip_to: Option<String> = None;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let indent = &line[..line.len() - line.trim_start().len()];
        if let Some(end) = &skip_to {
            if line == end.as_str() {
                skip_to = None;
            }
            i += 1;
            continue;
        }
        if line.trim_start() == "#[cfg(test)]" {
            skip_to = Some(format!("{indent}}}"));
            i += 1;
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let fn_at = words.iter().position(|w| *w == "fn");
        let is_item = fn_at.is_some_and(|k| {
            words[..k].iter().all(|w| {
                matches!(*w, "pub" | "async" | "const" | "unsafe" | "extern")
                    || w.starts_with("pub(")
            })
        });
        if let (true, Some(k)) = (is_item, fn_at) {
            let name: String = words
                .get(k + 1)
                .unwrap_or(&"?")
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let close = format!("{indent}}}");
            // A declaration without a body (trait method) ends with `;` before any `{`.
            let mut j = i;
            while j < lines.len() && !lines[j].ends_with('{') && !lines[j].ends_with(';') {
                j += 1;
            }
            if j < lines.len() && lines[j].ends_with('{') && !lines[j].trim_end().ends_with("{}") {
                let end = (j..lines.len()).find(|&e| lines[e] == close).unwrap_or(j);
                found.push((name, i + 1, end - i + 1));
            }
        }
        i += 1;
    }
    found
}

#[test]
fn function_lengths_are_counted_from_signature_to_closing_brace() {
    let src = "fn a() {\n    x();\n}\n\nimpl T {\n    pub(crate) async fn b(\n        x: u8,\n    ) -> u8 {\n        x\n    }\n    fn c();\n}\n#[cfg(test)]\nmod tests {\n    fn d() {\n    }\n}\n";
    let got = function_lengths(src);
    let got: Vec<_> = got
        .iter()
        .map(|(n, l, len)| (n.as_str(), *l, *len))
        .collect();
    assert_eq!(got, vec![("a", 1, 3), ("b", 6, 5)]);
}

#[test]
fn the_scanner_sees_imports_and_skips_comments_and_strings() {
    let modules: BTreeSet<String> = ["error", "http", "metrics", "report", "logging"]
        .map(String::from)
        .into();
    let macros: BTreeSet<String> = ["info", "warn", "error"].map(String::from).into();
    let code = strip_comments_and_strings(
        "use crate::{error, info, http::head::{a, b}};\n\
         // crate::report in a comment\n\
         let s = \"crate::report\"; let c = '\"'; let r = r#\"crate::report\"#;\n\
         crate::metrics::x(); crate::error!(\"x\"); crate::error::Shed;\n\
         $crate::logging::log(); my_crate::report::x();\n",
    );
    let refs = crate_references(&code, &modules, &macros);
    let want: Vec<(usize, String)> = [
        (1, "logging"),
        (1, "logging"),
        (1, "http"),
        (4, "metrics"),
        (4, "logging"),
        (4, "error"),
        (5, "logging"),
    ]
    .map(|(l, m)| (l, m.to_string()))
    .into();
    assert_eq!(refs, want);
}

#[test]
fn the_layer_table_is_read_from_the_rows_after_its_comment() {
    let doc = "| not | this |\n<!-- layers: … -->\n| layer | modules | what |\n|---|---|---|\n\
               | 0 | text, http | codecs |\n| 2 | `ctx` | state |\n\nafter\n| 9 | x | y |\n";
    let layers = parse_layers(doc);
    let want: BTreeMap<String, u32> = [("text", 0), ("http", 0), ("ctx", 2)]
        .map(|(m, l)| (m.to_string(), l))
        .into();
    assert_eq!(layers, want);
}

#[test]
fn a_circle_is_found_with_one_reference_per_step() {
    let e = |from: &str, to: &str, line| Edge {
        file: format!("src/{from}.rs"),
        line,
        from: from.to_string(),
        to: to.to_string(),
    };
    let edges = [
        e("a", "b", 1),
        e("b", "c", 2),
        e("c", "a", 3),
        e("c", "d", 4),
    ];
    let found = cycles(&edges);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].1, ["a", "b", "c"]);
    let steps: Vec<(&str, &str)> = found[0]
        .0
        .iter()
        .map(|e| (e.from.as_str(), e.to.as_str()))
        .collect();
    assert_eq!(steps, [("a", "b"), ("b", "c"), ("c", "a")]);
}
