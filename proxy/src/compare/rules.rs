//! Ignore rules (`compare.ignore_json_paths`) and learned noise patterns as one automaton over
//! the places of a JSON document, applied two ways: to trees ([`Rules::prune`], before the diff)
//! and while hashing ([`Rules::enter`], by the scanner and the serde pass of the fast path), so
//! that an ignored place never counts in either.
//!
//! A place is an object member or an array element, addressed from its parent by a [`Slot`].
//! The rules active at a node are a range of [`State`]s on one stack shared by the whole walk:
//! entering a child pushes the states that continue inside it above its parent's, and leaving
//! it pops them. A rule that ends at a child removes the child; an array element's index is its
//! index in the document as sent (removing `[1]` does not make `[2]` into `[1]`).

use cutover_config::{JsonPath, JsonPathSegment};
use serde_json::Value;

use super::noise::{NoiseSet, PatternToken};

/// One step of an ignore rule, borrowed from a [`JsonPath`] or a noise pattern.
#[derive(Debug, Clone, Copy)]
enum Step<'a> {
    /// JSONPath `.name`: an object member.
    Key(&'a str),
    /// JSONPath `[3]`: an array element.
    Index(usize),
    /// JSONPath `[*]` / `.*`: every member or element.
    Any,
    /// JSONPath `..name`: the member `name` at any depth below.
    Descendant(&'a str),
    /// JSON Pointer reference token: an object member, or the array element at its index.
    Token(&'a str, Option<usize>),
    /// Noise `*` (a generalised array index): every array element, and every object member
    /// whose name is `*` or all digits.
    Star,
}

/// Where a child sits in its parent.
#[derive(Clone, Copy)]
pub(super) enum Slot<'a> {
    Member(&'a str),
    Element(usize),
}

impl Step<'_> {
    fn matches(self, slot: Slot<'_>) -> bool {
        match (self, slot) {
            (Step::Key(key) | Step::Descendant(key), Slot::Member(name)) => key == name,
            (Step::Index(index), Slot::Element(at)) => index == at,
            (Step::Any | Step::Star, Slot::Element(_)) | (Step::Any, Slot::Member(_)) => true,
            (Step::Token(token, _), Slot::Member(name)) => token == name,
            (Step::Token(_, index), Slot::Element(at)) => index == Some(at),
            (Step::Star, Slot::Member(name)) => {
                name == "*" || (!name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()))
            }
            (Step::Key(_) | Step::Descendant(_), Slot::Element(_))
            | (Step::Index(_), Slot::Member(_)) => false,
        }
    }
}

/// A rule in progress: the next step to match is `steps[at]`, the rule ends at `steps[end]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct State {
    at: u32,
    end: u32,
}

/// All ignore rules of one comparison, flattened.
pub(super) struct Rules<'a> {
    steps: Vec<Step<'a>>,
    starts: Vec<State>,
    /// A rule with no step (the noise pattern `""`, the root) ignores everything.
    pub(super) whole_document: bool,
}

impl<'a> Rules<'a> {
    pub(super) fn new(ignore: &'a [JsonPath], noise: &'a NoiseSet) -> Self {
        let mut rules = Rules {
            steps: Vec::new(),
            starts: Vec::new(),
            whole_document: false,
        };
        for path in ignore {
            rules.add(path.segments.iter().map(|segment| match segment {
                JsonPathSegment::Key(key) => Step::Key(key),
                JsonPathSegment::Index(index) => Step::Index(*index),
                JsonPathSegment::AnyChild => Step::Any,
                JsonPathSegment::Descendant(key) => Step::Descendant(key),
            }));
        }
        for pattern in noise.parsed() {
            rules.add(pattern.iter().map(|token| match token {
                PatternToken::Star => Step::Star,
                PatternToken::Token { text, index } => Step::Token(text, *index),
            }));
        }
        rules
    }

    fn add(&mut self, steps: impl Iterator<Item = Step<'a>>) {
        let start = self.steps.len();
        self.steps.extend(steps);
        if self.steps.len() == start {
            self.whole_document = true;
        } else {
            self.starts.push(State {
                at: start as u32,
                end: self.steps.len() as u32,
            });
        }
    }

    /// No rule at all.
    #[cfg(test)]
    pub(super) fn none() -> Rules<'static> {
        Rules {
            steps: Vec::new(),
            starts: Vec::new(),
            whole_document: false,
        }
    }

    /// The rules active at the root, pushed on an empty `states`: their range is `0..len`.
    pub(super) fn start(&self, states: &mut Vec<State>) {
        states.clear();
        states.extend_from_slice(&self.starts);
    }

    /// Removes every member and element an ignore rule names.
    pub(super) fn prune(&self, value: &mut Value) {
        if self.starts.is_empty() {
            return;
        }
        let mut states = self.starts.clone();
        let end = states.len();
        self.walk(value, &mut states, 0, end);
    }

    /// Prunes the children of `value`, with `states[from..to]` the rules active at `value`.
    /// `states` is one stack shared by the whole walk: each child's states are pushed above
    /// its parent's and popped after it.
    fn walk(&self, value: &mut Value, states: &mut Vec<State>, from: usize, to: usize) {
        match value {
            Value::Object(map) => {
                map.retain(|name, child| self.visit(Slot::Member(name), child, states, from, to));
            }
            Value::Array(items) => {
                let mut index = 0;
                items.retain_mut(|child| {
                    let keep = self.visit(Slot::Element(index), child, states, from, to);
                    index += 1;
                    keep
                });
            }
            Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {}
        }
    }

    /// Whether `child` (at `slot`) stays; prunes inside it if some rule continues there.
    fn visit(
        &self,
        slot: Slot<'_>,
        child: &mut Value,
        states: &mut Vec<State>,
        from: usize,
        to: usize,
    ) -> bool {
        let container = matches!(child, Value::Object(_) | Value::Array(_));
        let mark = states.len();
        if !self.enter(slot, container, states, from, to) {
            return false;
        }
        let top = states.len();
        if top > mark {
            self.walk(child, states, mark, top);
        }
        states.truncate(mark);
        true
    }

    /// Enters the child at `slot` of a node whose active rules are `states[from..to]`: `false`
    /// when a rule ends there (the child is ignored; `states` is left as it was), else `true`
    /// with the rules that continue inside the child pushed on `states` — only for a
    /// `container`, since nothing is below a scalar. The caller pops them after the child.
    pub(super) fn enter(
        &self,
        slot: Slot<'_>,
        container: bool,
        states: &mut Vec<State>,
        from: usize,
        to: usize,
    ) -> bool {
        let mark = states.len();
        for i in from..to {
            let state = states[i];
            let step = self.steps[state.at as usize];
            if container && matches!(step, Step::Descendant(_)) {
                // `..name` keeps looking below, whatever this child is called.
                push_unique(states, mark, state);
            }
            if step.matches(slot) {
                let next = State {
                    at: state.at + 1,
                    end: state.end,
                };
                if next.at == next.end {
                    states.truncate(mark);
                    return false;
                }
                if container {
                    push_unique(states, mark, next);
                }
            }
        }
        true
    }
}

/// Pushes `state` unless `states[mark..]` already holds it (keeps nested `..` rules linear).
fn push_unique(states: &mut Vec<State>, mark: usize, state: State) {
    if !states[mark..].contains(&state) {
        states.push(state);
    }
}
