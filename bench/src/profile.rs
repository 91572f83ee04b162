//! Where a target's CPU goes: `perf record` of the target's processes (the `cpu-clock` event,
//! which needs no hardware counters, so it works in a VM) during one more closed-loop run of a
//! phase, and `perf report`'s functions by their share of the samples, kernel and user apart.
//! Issue 14 asks for it wherever a CPU target is missed; the suite profiles the runs those
//! targets are about (`make bench`), and the report lists the result under "Where the CPU goes".

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::suite::Phase;
use crate::targets::TargetKind;

/// What the suite profiles, and how.
#[derive(Debug, Clone)]
pub struct ProfileOptions {
    /// (phase, target) pairs, in report order; targets that did not run are left out.
    pub plans: Vec<(Phase, TargetKind)>,
    /// perf's sampling frequency of the `cpu-clock` event, Hz.
    pub frequency: u32,
    /// The profiled run's length (a closed loop with the phase's connections).
    pub duration: Duration,
    /// Functions listed per profile.
    pub top: usize,
}

impl ProfileOptions {
    /// The report's: cutover with and without shadow at 1 KiB and 64 KiB (the CPU targets of
    /// issues 14 and 15), and nginx at both sizes to read them against.
    pub fn standard() -> ProfileOptions {
        let mut plans = Vec::new();
        for phase in [Phase::Closed1k, Phase::Closed64k] {
            for target in [
                TargetKind::Cutover,
                TargetKind::CutoverShadow,
                TargetKind::Nginx,
            ] {
                plans.push((phase, target));
            }
        }
        ProfileOptions {
            plans,
            frequency: 2999,
            duration: Duration::from_millis(1500),
            top: 15,
        }
    }
}

/// One function of a profile, as `perf report` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    pub samples: u64,
    /// In the kernel (`[k]`), not in the process's own code or its libraries (`[.]`).
    pub kernel: bool,
    /// The binary or library (`[kernel.kallsyms]` for the kernel).
    pub object: String,
    pub name: String,
}

/// A profiled run.
#[derive(Debug, Clone)]
pub struct Profile {
    pub phase: Phase,
    pub target: TargetKind,
    /// Requests answered while perf recorded.
    pub requests: u64,
    pub errors: u64,
    /// Every function that had a sample, most samples first.
    pub functions: Vec<Function>,
}

impl Profile {
    pub fn samples(&self) -> u64 {
        self.functions.iter().map(|f| f.samples).sum()
    }

    /// The share of the samples in the kernel.
    pub fn kernel_share(&self) -> f64 {
        let kernel: u64 = self
            .functions
            .iter()
            .filter(|f| f.kernel)
            .map(|f| f.samples)
            .sum();
        kernel as f64 / self.samples().max(1) as f64
    }

    /// Samples per object (the kernel, the program, each library), most first.
    pub fn by_object(&self) -> Vec<(String, u64)> {
        let mut objects: BTreeMap<&str, u64> = BTreeMap::new();
        for f in &self.functions {
            let object = if f.kernel {
                "kernel"
            } else {
                f.object.as_str()
            };
            *objects.entry(object).or_default() += f.samples;
        }
        let mut objects: Vec<(String, u64)> = objects
            .into_iter()
            .map(|(o, n)| (o.to_string(), n))
            .collect();
        objects.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        objects
    }

    /// The profile as Markdown: a title, the split by object and the top `top` functions.
    pub fn to_markdown(&self, top: usize) -> String {
        let mut w = String::new();
        let samples = self.samples();
        let share = |n: u64| n as f64 * 100.0 / samples.max(1) as f64;
        let _ = writeln!(
            w,
            "### {}, {}\n\n{samples} samples over {} requests ({} errors); kernel {:.1} %, \
             user {:.1} %. By object: {}.\n",
            self.target.name(),
            self.phase.name(),
            self.requests,
            self.errors,
            self.kernel_share() * 100.0,
            100.0 - self.kernel_share() * 100.0,
            self.by_object()
                .iter()
                .take(6)
                .map(|(o, n)| format!("{o} {:.1} %", share(*n)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(w, "| share | where | function |\n|--:|:--|:--|");
        for f in self.functions.iter().take(top) {
            let place = if f.kernel {
                "kernel"
            } else {
                f.object.as_str()
            };
            let _ = writeln!(
                w,
                "| {:.1} % | {place} | `{}` |",
                share(f.samples),
                shorten(&f.name, 110).replace('|', "\\|")
            );
        }
        let _ = writeln!(w);
        w
    }
}

/// `name` cut to `max` characters, with an ellipsis when cut.
fn shorten(name: &str, max: usize) -> String {
    if name.chars().count() <= max {
        return name.to_string();
    }
    let mut cut: String = name.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

/// The arguments of `perf report` whose output [`parse_report`] reads.
pub const REPORT_ARGS: [&str; 6] = [
    "report",
    "--stdio",
    "--no-children",
    "--sort=dso,sym",
    "--show-nr-samples",
    "--percent-limit=0",
];

/// The functions in the output of `perf report` run with [`REPORT_ARGS`], most samples first:
/// lines `<overhead>% <samples> <object> [k|.] <function>`; comments and anything else are
/// skipped.
pub fn parse_report(text: &str) -> Vec<Function> {
    let mut functions: Vec<Function> = text
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            fields.next()?.strip_suffix('%')?.parse::<f64>().ok()?;
            let samples = fields.next()?.parse::<u64>().ok()?;
            let object = fields.next()?.to_string();
            let kernel = match fields.next()? {
                "[k]" => true,
                "[.]" => false,
                _ => return None,
            };
            let name = fields.collect::<Vec<_>>().join(" ");
            (!name.is_empty()).then_some(Function {
                samples,
                kernel,
                object,
                name,
            })
        })
        .collect();
    functions.sort_by_key(|f| std::cmp::Reverse(f.samples));
    functions
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `perf report` output as perf 6.1 prints it with [`REPORT_ARGS`] (names shortened).
    const REPORT: &str = "\
# To display the perf.data header info, please use --header/--header-only options.
#
# Total Lost Samples: 0
#
# Samples: 9K of event 'cpu-clock:pppH'
# Event count (approx.): 2577250000
#
# Overhead       Samples  Shared Object         Symbol
# ........  ............  ....................  ......
#
    41.20%          4120  [kernel.kallsyms]     [k] tcp_sendmsg_locked
    30.00%          3000  cutover               [.] cutover_proxy::compare::json::structural_hash
    18.80%          1880  cutover               [.] <hyper::proto::h1::role::Server as hyper::proto::h1::Http1Transaction>::parse
     9.99%           999  libc.so.6             [.] __memmove_avx512_unaligned_erms
     0.01%             1  [unknown]             [.] 0x00007f0000000000


#
# (Cannot load tips.txt file, please install perf!)
#
";

    #[test]
    fn a_report_becomes_functions_with_their_samples() {
        let functions = parse_report(REPORT);
        assert_eq!(functions.len(), 5);
        assert_eq!(
            functions[0],
            Function {
                samples: 4120,
                kernel: true,
                object: "[kernel.kallsyms]".into(),
                name: "tcp_sendmsg_locked".into(),
            }
        );
        // Names with spaces are kept whole.
        assert_eq!(
            functions[2].name,
            "<hyper::proto::h1::role::Server as hyper::proto::h1::Http1Transaction>::parse"
        );
        let profile = Profile {
            phase: Phase::Closed1k,
            target: TargetKind::Cutover,
            requests: 100,
            errors: 0,
            functions,
        };
        assert_eq!(profile.samples(), 10_000);
        assert!((profile.kernel_share() - 0.412).abs() < 1e-9);
        assert_eq!(
            profile.by_object(),
            vec![
                ("cutover".to_string(), 4880),
                ("kernel".to_string(), 4120),
                ("libc.so.6".to_string(), 999),
                ("[unknown]".to_string(), 1),
            ]
        );
        let md = profile.to_markdown(2);
        assert!(md.contains("kernel 41.2 %, user 58.8 %"), "{md}");
        assert!(
            md.contains("| 41.2 % | kernel | `tcp_sendmsg_locked` |"),
            "{md}"
        );
        assert!(!md.contains("memmove"), "only the top 2: {md}");
    }

    #[test]
    fn what_is_not_a_function_line_is_skipped() {
        assert!(parse_report("").is_empty());
        assert!(parse_report("perf: no samples\n  12 % words\n 5.0% x y [?] z\n").is_empty());
        assert_eq!(shorten("abcdef", 4), "abc…");
        assert_eq!(shorten("abc", 4), "abc");
    }
}
