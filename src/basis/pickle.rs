//! A restricted pickle reader: it runs the pickle stack machine but executes
//! nothing. Globals are checked against a caller's allow-list the moment they
//! are named (anything else is an error naming the global); REDUCE, NEWOBJ and
//! BUILD only record a [`Value::Call`] node for the caller to interpret.
//!
//! Supports the opcodes of protocols 2–5 that plain data needs (ints, floats,
//! strings, bytes, tuples, lists, dicts, memo, globals, reduce/build,
//! persistent ids). Limits, by design: the memo stores snapshots, so a pickle
//! that mutates a container after fetching it back from the memo is read as
//! if it had not; out-of-band buffers (protocol 5 `NEXT_BUFFER`) are refused.
//! Every length is checked against the bytes that remain.
//!
//! Hostile input cannot exhaust the machine: values nest at most
//! [`MAX_DEPTH`] deep (so building, cloning and dropping them never overflows
//! the stack), and the nodes the reader creates, memo copies included, are
//! capped at a small multiple of the input's size (so a few hundred bytes
//! that copy a memoised tree into itself forty times — a "billion laughs" —
//! are refused instead of growing exponentially). The size and depth of every
//! stack entry are tracked beside it, so the checks cost O(1) per opcode.

use std::collections::HashMap;

/// Deepest nesting of containers a pickle may build (the paper's files: 6).
pub const MAX_DEPTH: u32 = 200;

/// Nodes a pickle may create beyond one per input byte (the paper's
/// files create fewer nodes than they have bytes).
const EXTRA_NODES: u64 = 1 << 20;

/// Size and nesting of a value, kept beside it on the stack and in the memo.
#[derive(Debug, Clone, Copy)]
struct Meta {
    depth: u32,
    nodes: u64,
}

const LEAF: Meta = Meta { depth: 1, nodes: 1 };

impl Meta {
    /// A container holding values of these metas.
    fn holding(items: &[Meta]) -> Meta {
        items.iter().fold(LEAF, |m, i| m.with(*i))
    }

    /// This container after one more item.
    fn with(self, item: Meta) -> Meta {
        Meta {
            depth: self.depth.max(item.depth.saturating_add(1)),
            nodes: self.nodes.saturating_add(item.nodes),
        }
    }
}

/// A value on the pickle stack.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    None,
    Bool(bool),
    Int(i64),
    /// An integer too wide for i64: little-endian two's-complement bytes.
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    /// Bytes borrowed from the input.
    Bytes(&'a [u8]),
    Tuple(Vec<Value<'a>>),
    List(Vec<Value<'a>>),
    Dict(Vec<(Value<'a>, Value<'a>)>),
    /// An allowed global, by name; never resolved to code.
    Global {
        module: String,
        name: String,
    },
    /// `func(*args)` as recorded by REDUCE/NEWOBJ, plus BUILD's state if any.
    Call {
        func: Box<Value<'a>>,
        args: Box<Value<'a>>,
        state: Option<Box<Value<'a>>>,
    },
    /// A persistent id (torch's storage references).
    Persistent(Box<Value<'a>>),
}

impl<'a> Value<'a> {
    /// `Some((module, name))` when this is a global or a call of one.
    pub fn callee(&self) -> Option<(&str, &str)> {
        match self {
            Value::Global { module, name } => Some((module, name)),
            Value::Call { func, .. } => func.callee(),
            _ => None,
        }
    }

    /// The integer, if it is one that fits i64.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    /// Items of a tuple or list.
    pub fn as_seq(&self) -> Option<&[Value<'a>]> {
        match self {
            Value::Tuple(v) | Value::List(v) => Some(v),
            _ => None,
        }
    }
}

/// Why a pickle was not read.
#[derive(Debug, Clone, PartialEq)]
pub enum PickleError {
    /// A global outside the allow-list.
    Forbidden { module: String, name: String },
    /// Anything else, with the byte offset.
    Malformed(String),
}

/// Reads one pickle starting at `*pos` (advanced past its STOP).
pub fn load<'a>(
    data: &'a [u8],
    pos: &mut usize,
    allow: &dyn Fn(&str, &str) -> bool,
) -> Result<Value<'a>, PickleError> {
    let mut m = Machine {
        data,
        pos: *pos,
        stack: Vec::new(),
        metas: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        created: 0,
        node_budget: (data.len() as u64).saturating_add(EXTRA_NODES),
        allow,
    };
    let v = m.run()?;
    *pos = m.pos;
    Ok(v)
}

struct Machine<'a, 'f> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value<'a>>,
    /// `metas[i]` describes `stack[i]`.
    metas: Vec<Meta>,
    marks: Vec<usize>,
    memo: HashMap<u32, (Value<'a>, Meta)>,
    /// Nodes made so far, copies included; at most `node_budget`.
    created: u64,
    node_budget: u64,
    allow: &'f dyn Fn(&str, &str) -> bool,
}

fn bad(msg: String) -> PickleError {
    PickleError::Malformed(msg)
}

impl<'a, 'f> Machine<'a, 'f> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                bad(format!(
                    "truncated at offset {} (wanted {n} bytes)",
                    self.pos
                ))
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, PickleError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, PickleError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, PickleError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    fn len64(&mut self) -> Result<usize, PickleError> {
        usize::try_from(self.u64()?).map_err(|_| bad("length does not fit".into()))
    }

    fn line(&mut self) -> Result<&'a str, PickleError> {
        let raw = self.raw_line()?;
        std::str::from_utf8(raw).map_err(|_| bad("non-UTF-8 line".into()))
    }

    /// The bytes up to the next newline (protocol 0's text arguments).
    fn raw_line(&mut self) -> Result<&'a [u8], PickleError> {
        let rest = &self.data[self.pos..];
        let nl = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or_else(|| bad(format!("unterminated line at offset {}", self.pos)))?;
        self.pos += nl + 1;
        Ok(&rest[..nl])
    }

    /// A protocol-0 decimal argument (LONG, FLOAT, PUT, GET; INT, which
    /// may be a boolean, reads its own line).
    fn decimal<T: std::str::FromStr>(&mut self, what: &str) -> Result<T, PickleError> {
        let at = self.pos;
        let line = self.line()?;
        // LONG's text ends in `L` (`5L`).
        let digits = if what == "LONG" {
            line.strip_suffix('L').unwrap_or(line)
        } else {
            line
        };
        digits
            .parse()
            .map_err(|_| bad(format!("{what} {line:?} at offset {at} is not a number")))
    }

    fn utf8(&mut self, n: usize) -> Result<Value<'a>, PickleError> {
        let b = self.take(n)?;
        std::str::from_utf8(b)
            .map(|s| Value::Str(s.to_string()))
            .map_err(|_| bad("invalid UTF-8 string".into()))
    }

    fn latin1(&mut self, n: usize) -> Result<Value<'a>, PickleError> {
        Ok(Value::Str(
            self.take(n)?.iter().map(|&c| c as char).collect(),
        ))
    }

    /// Pushes a value of the given size and nesting, charging its nodes.
    fn push(&mut self, v: Value<'a>, meta: Meta) -> Result<(), PickleError> {
        self.check(meta)?;
        self.stack.push(v);
        self.metas.push(meta);
        Ok(())
    }

    fn push_leaf(&mut self, v: Value<'a>) -> Result<(), PickleError> {
        self.charge(1)?;
        self.push(v, LEAF)
    }

    /// Refuses a value nested too deep, or one whose nodes would take the
    /// reader past its budget.
    fn check(&self, meta: Meta) -> Result<(), PickleError> {
        if meta.depth > MAX_DEPTH {
            return Err(bad(format!(
                "values nested more than {MAX_DEPTH} deep at offset {}",
                self.pos
            )));
        }
        Ok(())
    }

    /// Counts `nodes` more made (a new node, or a copy of a memoised tree).
    fn charge(&mut self, nodes: u64) -> Result<(), PickleError> {
        self.created = self.created.saturating_add(nodes);
        if self.created > self.node_budget {
            return Err(bad(format!(
                "more than {} values built from {} bytes at offset {} (a pickle that copies \
                 memoised values into themselves?)",
                self.node_budget,
                self.data.len(),
                self.pos
            )));
        }
        Ok(())
    }

    fn pop(&mut self) -> Result<(Value<'a>, Meta), PickleError> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(bad(format!(
                "stack underflow at a mark, offset {}",
                self.pos
            )));
        }
        match (self.stack.pop(), self.metas.pop()) {
            (Some(v), Some(m)) => Ok((v, m)),
            _ => Err(bad(format!("stack underflow at offset {}", self.pos))),
        }
    }

    fn top(&mut self) -> Result<(&mut Value<'a>, &mut Meta), PickleError> {
        let pos = self.pos;
        match (self.stack.last_mut(), self.metas.last_mut()) {
            (Some(v), Some(m)) => Ok((v, m)),
            _ => Err(bad(format!("empty stack at offset {pos}"))),
        }
    }

    fn pop_mark(&mut self) -> Result<(Vec<Value<'a>>, Vec<Meta>), PickleError> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| bad(format!("no mark at offset {}", self.pos)))?;
        if m > self.stack.len() {
            return Err(bad("mark above the stack".into()));
        }
        Ok((self.stack.split_off(m), self.metas.split_off(m)))
    }

    /// Pushes a container of `items`, measured from their metas.
    fn push_container(
        &mut self,
        make: impl FnOnce(Vec<Value<'a>>) -> Value<'a>,
        items: (Vec<Value<'a>>, Vec<Meta>),
    ) -> Result<(), PickleError> {
        let meta = Meta::holding(&items.1);
        self.charge(1)?;
        self.push(make(items.0), meta)
    }

    fn global(&self, module: &str, name: &str) -> Result<Value<'a>, PickleError> {
        if (self.allow)(module, name) {
            Ok(Value::Global {
                module: module.to_string(),
                name: name.to_string(),
            })
        } else {
            Err(PickleError::Forbidden {
                module: module.to_string(),
                name: name.to_string(),
            })
        }
    }

    /// Copies the top of the stack (DUP, MEMOIZE): a copy costs its nodes.
    fn copy_top(&mut self) -> Result<(Value<'a>, Meta), PickleError> {
        let meta = *self.top()?.1;
        self.charge(meta.nodes)?;
        Ok((self.top()?.0.clone(), meta))
    }

    fn memo_put(&mut self, key: u32) -> Result<(), PickleError> {
        let entry = self.copy_top()?;
        self.memo.insert(key, entry);
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> Result<(), PickleError> {
        let meta = self
            .memo
            .get(&key)
            .map(|e| e.1)
            .ok_or_else(|| bad(format!("memo key {key} unset")))?;
        // Charged before the copy is made: the budget, not the allocator,
        // stops a tree that doubles with every fetch.
        self.charge(meta.nodes)?;
        let v = self.memo[&key].0.clone();
        self.push(v, meta)
    }

    /// Adds items to the container on top, updating its meta.
    fn extend_top(
        &mut self,
        items: (Vec<Value<'a>>, Vec<Meta>),
        add: impl FnOnce(&mut Value<'a>, Vec<Value<'a>>) -> Result<(), PickleError>,
    ) -> Result<(), PickleError> {
        let (top, meta) = self.top()?;
        let grown = items.1.iter().fold(*meta, |m, i| m.with(*i));
        add(top, items.0)?;
        *meta = grown;
        self.check(grown)
    }

    fn set_items(&mut self, items: (Vec<Value<'a>>, Vec<Meta>)) -> Result<(), PickleError> {
        if !items.0.len().is_multiple_of(2) {
            return Err(bad("odd number of dict items".into()));
        }
        self.extend_top(items, |top, items| {
            let Value::Dict(d) = top else {
                return Err(bad("SETITEMS on a non-dict".into()));
            };
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                d.push((k, v));
            }
            Ok(())
        })
    }

    fn append(&mut self, items: (Vec<Value<'a>>, Vec<Meta>)) -> Result<(), PickleError> {
        self.extend_top(items, |top, items| match top {
            Value::List(l) => {
                l.extend(items);
                Ok(())
            }
            _ => Err(bad("APPEND on a non-list".into())),
        })
    }

    fn run(&mut self) -> Result<Value<'a>, PickleError> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let p = self.u8()?;
                    if p > 5 {
                        return Err(bad(format!("protocol {p} not supported")));
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: a length hint only
                }
                b'.' => {
                    let (v, _) = self.pop()?;
                    return Ok(v);
                }
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let (v, m) = self.copy_top()?;
                    self.push(v, m)?;
                }
                b'N' => self.push_leaf(Value::None)?,
                0x88 => self.push_leaf(Value::Bool(true))?,
                0x89 => self.push_leaf(Value::Bool(false))?,
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push_leaf(Value::Int(v as i64))?
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push_leaf(Value::Int(v as i64))?
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push_leaf(Value::Int(v as i64))?
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.u8()? as usize
                    } else {
                        let n = self.u32()? as i32;
                        usize::try_from(n).map_err(|_| bad("negative LONG4 length".into()))?
                    };
                    let b = self.take(n)?;
                    self.push_leaf(long_value(b))?;
                }
                // Protocol 0's text forms (and protocol 1's booleans, which
                // have no binary opcode before protocol 2).
                b'I' => {
                    let at = self.pos;
                    let v = match self.line()? {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        text => Value::Int(text.parse().map_err(|_| {
                            bad(format!("INT {text:?} at offset {at} is not a number"))
                        })?),
                    };
                    self.push_leaf(v)?
                }
                b'L' => {
                    let v = self.decimal::<i64>("LONG")?;
                    self.push_leaf(Value::Int(v))?
                }
                b'F' => {
                    let v = self.decimal::<f64>("FLOAT")?;
                    self.push_leaf(Value::Float(v))?
                }
                b'V' => {
                    let raw = self.raw_line()?;
                    let v = raw_unicode_escape(raw).ok_or_else(|| {
                        bad(format!("UNICODE at offset {}: a bad \\u escape", self.pos))
                    })?;
                    self.push_leaf(Value::Str(v))?
                }
                b'p' => {
                    let k = self.decimal::<u32>("PUT")?;
                    self.memo_put(k)?
                }
                b'g' => {
                    let k = self.decimal::<u32>("GET")?;
                    self.memo_get(k)?
                }
                b'G' => {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(self.take(8)?);
                    self.push_leaf(Value::Float(f64::from_be_bytes(a)))?
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.utf8(n)?;
                    self.push_leaf(v)?
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.utf8(n)?;
                    self.push_leaf(v)?
                }
                0x8d => {
                    let n = self.len64()?;
                    let v = self.utf8(n)?;
                    self.push_leaf(v)?
                }
                b'T' => {
                    let n = self.u32()? as usize;
                    let v = self.latin1(n)?;
                    self.push_leaf(v)?
                }
                b'U' => {
                    let n = self.u8()? as usize;
                    let v = self.latin1(n)?;
                    self.push_leaf(v)?
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?;
                    self.push_leaf(Value::Bytes(b))?
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    self.push_leaf(Value::Bytes(b))?
                }
                0x8e | 0x96 => {
                    let n = self.len64()?;
                    let b = self.take(n)?;
                    self.push_leaf(Value::Bytes(b))?
                }
                b')' => self.push_leaf(Value::Tuple(Vec::new()))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_container(Value::Tuple, items)?
                }
                0x85..=0x87 => {
                    let k = (op - 0x84) as usize;
                    let (mut items, mut metas) = (Vec::with_capacity(k), Vec::with_capacity(k));
                    for _ in 0..k {
                        let (v, m) = self.pop()?;
                        items.push(v);
                        metas.push(m);
                    }
                    items.reverse();
                    self.push_container(Value::Tuple, (items, metas))?
                }
                b']' => self.push_leaf(Value::List(Vec::new()))?,
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push_container(Value::List, items)?
                }
                b'a' => {
                    let (v, m) = self.pop()?;
                    self.append((vec![v], vec![m]))?
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?
                }
                b'}' => self.push_leaf(Value::Dict(Vec::new()))?,
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push_leaf(Value::Dict(Vec::new()))?;
                    self.set_items(items)?
                }
                b's' => {
                    let (v, mv) = self.pop()?;
                    let (k, mk) = self.pop()?;
                    self.set_items((vec![k, v], vec![mk, mv]))?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    self.memo_put(k)?
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    self.memo_put(k)?
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memo_put(k)?
                }
                b'h' => {
                    let k = self.u8()? as u32;
                    self.memo_get(k)?
                }
                b'j' => {
                    let k = self.u32()?;
                    self.memo_get(k)?
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.global(module, name)?;
                    self.push_leaf(g)?
                }
                0x93 => {
                    let (name, _) = self.pop()?;
                    let (module, _) = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err(bad(format!("STACK_GLOBAL without strings at offset {at}")));
                    };
                    let g = self.global(&module, &name)?;
                    self.push_leaf(g)?
                }
                b'R' | 0x81 => {
                    let (args, ma) = self.pop()?;
                    let (func, mf) = self.pop()?;
                    if !matches!(func, Value::Global { .. }) {
                        return Err(bad(format!("call of a non-global at offset {at}")));
                    }
                    self.charge(1)?;
                    let call = Value::Call {
                        func: Box::new(func),
                        args: Box::new(args),
                        state: None,
                    };
                    self.push(call, Meta::holding(&[mf, ma]))?
                }
                b'b' => {
                    let st = self.pop()?;
                    self.extend_top((vec![st.0], vec![st.1]), |top, mut st| match top {
                        Value::Call { state, .. } if state.is_none() => {
                            *state = st.pop().map(Box::new);
                            Ok(())
                        }
                        _ => Err(bad(format!("BUILD on a non-object at offset {at}"))),
                    })?
                }
                b'Q' => {
                    let (pid, m) = self.pop()?;
                    self.charge(1)?;
                    self.push(Value::Persistent(Box::new(pid)), Meta::holding(&[m]))?
                }
                b'P' => {
                    let s = self.line()?.to_string();
                    self.charge(2)?;
                    let pid = Value::Persistent(Box::new(Value::Str(s)));
                    self.push(pid, Meta::holding(&[LEAF]))?
                }
                other => {
                    return Err(bad(format!(
                        "opcode 0x{other:02x} at offset {at} is not supported by this restricted reader"
                    )))
                }
            }
        }
    }
}

/// Python's `raw-unicode-escape` decoding, which protocol 0 writes its
/// strings in: `\uXXXX` and `\UXXXXXXXX` are characters, every other byte
/// is the Latin-1 character of its value (the pickler escapes backslashes
/// and newlines itself). None for an escape that is not one.
fn raw_unicode_escape(b: &[u8]) -> Option<String> {
    let mut s = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let n = match (b[i], b.get(i + 1)) {
            (b'\\', Some(b'u')) => 4,
            (b'\\', Some(b'U')) => 8,
            (c, _) => {
                s.push(char::from(c));
                i += 1;
                continue;
            }
        };
        let hex = std::str::from_utf8(b.get(i + 2..i + 2 + n)?).ok()?;
        s.push(char::from_u32(u32::from_str_radix(hex, 16).ok()?)?);
        i += 2 + n;
    }
    Some(s)
}

/// LONG1/LONG4 payload: little-endian two's complement.
fn long_value<'a>(b: &[u8]) -> Value<'a> {
    if b.is_empty() {
        return Value::Int(0);
    }
    if b.len() <= 8 {
        let neg = b[b.len() - 1] & 0x80 != 0;
        let mut a = if neg { [0xffu8; 8] } else { [0u8; 8] };
        a[..b.len()].copy_from_slice(b);
        Value::Int(i64::from_le_bytes(a))
    } else {
        Value::BigInt(b.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow_none(_: &str, _: &str) -> bool {
        false
    }

    #[test]
    fn reads_basic_protocol_2() {
        // pickle.dumps({'a': (1, -2, 300, 70000)}, protocol=2)
        let p = b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01(K\x01J\xfe\xff\xff\xffM,\x01J\x70\x11\x01\x00tq\x02s.";
        let mut pos = 0;
        let v = load(p, &mut pos, &allow_none).unwrap();
        assert_eq!(pos, p.len());
        assert_eq!(
            v,
            Value::Dict(vec![(
                Value::Str("a".into()),
                Value::Tuple(vec![
                    Value::Int(1),
                    Value::Int(-2),
                    Value::Int(300),
                    Value::Int(70000)
                ])
            )])
        );
    }

    #[test]
    fn refuses_unlisted_globals_by_name() {
        // The classic payload: os.system('echo pwned')
        let p = b"cos\nsystem\n(X\x0a\x00\x00\x00echo pwnedtR.";
        let err = load(p, &mut 0, &allow_none).unwrap_err();
        assert_eq!(
            err,
            PickleError::Forbidden {
                module: "os".into(),
                name: "system".into()
            }
        );
        // Same through STACK_GLOBAL (protocol 4).
        let p = b"\x80\x04\x8c\x08builtins\x94\x8c\x04eval\x94\x93.";
        let err = load(p, &mut 0, &allow_none).unwrap_err();
        assert!(matches!(err, PickleError::Forbidden { ref name, .. } if name == "eval"));
    }

    #[test]
    fn rejects_truncated_and_unknown() {
        assert!(matches!(
            load(b"\x80\x02X\xff\x00\x00\x00ab", &mut 0, &allow_none),
            Err(PickleError::Malformed(_))
        ));
        assert!(matches!(
            load(b"\x80\x05\x97.", &mut 0, &allow_none),
            Err(PickleError::Malformed(_))
        ));
        assert!(matches!(
            load(b"\x80\x02.", &mut 0, &allow_none),
            Err(PickleError::Malformed(_))
        ));
    }

    fn malformed(r: Result<Value<'_>, PickleError>) -> String {
        match r {
            Err(PickleError::Malformed(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn refuses_deep_nesting_without_overflowing_the_stack() {
        // 1 wrapped in two million 1-tuples: recursion in clone/drop/Debug
        // would overflow the thread's stack long before the end.
        let mut p = b"\x80\x02K\x01".to_vec();
        p.extend(std::iter::repeat_n(0x85u8, 2_000_000));
        p.push(b'.');
        let m = malformed(load(&p, &mut 0, &allow_none));
        assert!(m.contains("nested more than 200 deep"), "{m}");
        // Just inside the limit is fine.
        let mut p = b"\x80\x02K\x01".to_vec();
        p.extend(std::iter::repeat_n(0x85u8, MAX_DEPTH as usize - 1));
        p.push(b'.');
        assert!(load(&p, &mut 0, &allow_none).is_ok());
    }

    #[test]
    fn refuses_exponential_memo_copies() {
        // "Billion laughs": list_i = [list_{i-1}, list_{i-1}] through the
        // memo, 40 levels in ~300 bytes: 2^40 nodes if copies were free.
        let mut p = b"\x80\x02(K\x01lq\x00".to_vec();
        for i in 1..=40u8 {
            p.extend([b'(', b'h', i - 1, b'h', i - 1, b'l', b'q', i]);
        }
        p.push(b'.');
        let t = std::time::Instant::now();
        let m = malformed(load(&p, &mut 0, &allow_none));
        assert!(m.contains("values built from"), "{m}");
        // Refused at the budget, not after building gigabytes.
        assert!(t.elapsed().as_secs() < 10);
        // A legitimately large flat list (100,000 ints) is not refused.
        let mut p = b"\x80\x02](".to_vec();
        for _ in 0..100_000 {
            p.extend(b"K\x07");
        }
        p.extend(b"e.");
        let v = load(&p, &mut 0, &allow_none).unwrap();
        assert_eq!(v.as_seq().map(|s| s.len()), Some(100_000));
    }

    #[test]
    fn long1_decodes_torch_magic() {
        let p = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.";
        let v = load(p, &mut 0, &allow_none).unwrap();
        let mut want = 0x1950a86a20f9469cfc6cu128.to_le_bytes()[..10].to_vec();
        want.truncate(10);
        assert_eq!(v, Value::BigInt(want));
        assert_eq!(long_value(&[0xff]), Value::Int(-1));
        assert_eq!(long_value(&[0x00, 0x01]), Value::Int(256));
    }
}
