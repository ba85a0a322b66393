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

use std::collections::HashMap;

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
        marks: Vec::new(),
        memo: HashMap::new(),
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
    marks: Vec<usize>,
    memo: HashMap<u32, Value<'a>>,
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
        let rest = &self.data[self.pos..];
        let nl = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or_else(|| bad(format!("unterminated line at offset {}", self.pos)))?;
        let s = std::str::from_utf8(&rest[..nl]).map_err(|_| bad("non-UTF-8 line".into()))?;
        self.pos += nl + 1;
        Ok(s)
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

    fn pop(&mut self) -> Result<Value<'a>, PickleError> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(bad(format!(
                "stack underflow at a mark, offset {}",
                self.pos
            )));
        }
        self.stack
            .pop()
            .ok_or_else(|| bad(format!("stack underflow at offset {}", self.pos)))
    }

    fn top(&mut self) -> Result<&mut Value<'a>, PickleError> {
        let pos = self.pos;
        self.stack
            .last_mut()
            .ok_or_else(|| bad(format!("empty stack at offset {pos}")))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value<'a>>, PickleError> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| bad(format!("no mark at offset {}", self.pos)))?;
        if m > self.stack.len() {
            return Err(bad("mark above the stack".into()));
        }
        Ok(self.stack.split_off(m))
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

    fn memo_put(&mut self, key: u32) -> Result<(), PickleError> {
        let v = self.top()?.clone();
        self.memo.insert(key, v);
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> Result<(), PickleError> {
        let v = self
            .memo
            .get(&key)
            .cloned()
            .ok_or_else(|| bad(format!("memo key {key} unset")))?;
        self.stack.push(v);
        Ok(())
    }

    fn set_items(&mut self, items: Vec<Value<'a>>) -> Result<(), PickleError> {
        if !items.len().is_multiple_of(2) {
            return Err(bad("odd number of dict items".into()));
        }
        let Value::Dict(d) = self.top()? else {
            return Err(bad("SETITEMS on a non-dict".into()));
        };
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            d.push((k, v));
        }
        Ok(())
    }

    fn append(&mut self, items: Vec<Value<'a>>) -> Result<(), PickleError> {
        match self.top()? {
            Value::List(l) => {
                l.extend(items);
                Ok(())
            }
            _ => Err(bad("APPEND on a non-list".into())),
        }
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
                    let v = self.pop()?;
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
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(v as i64))
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64))
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(v as i64))
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.u8()? as usize
                    } else {
                        let n = self.u32()? as i32;
                        usize::try_from(n).map_err(|_| bad("negative LONG4 length".into()))?
                    };
                    let b = self.take(n)?;
                    self.stack.push(long_value(b));
                }
                b'G' => {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(self.take(8)?);
                    self.stack.push(Value::Float(f64::from_be_bytes(a)))
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.utf8(n)?;
                    self.stack.push(v)
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.utf8(n)?;
                    self.stack.push(v)
                }
                0x8d => {
                    let n = self.len64()?;
                    let v = self.utf8(n)?;
                    self.stack.push(v)
                }
                b'T' => {
                    let n = self.u32()? as usize;
                    let v = self.latin1(n)?;
                    self.stack.push(v)
                }
                b'U' => {
                    let n = self.u8()? as usize;
                    let v = self.latin1(n)?;
                    self.stack.push(v)
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?;
                    self.stack.push(Value::Bytes(b))
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    self.stack.push(Value::Bytes(b))
                }
                0x8e | 0x96 => {
                    let n = self.len64()?;
                    let b = self.take(n)?;
                    self.stack.push(Value::Bytes(b))
                }
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items))
                }
                0x85..=0x87 => {
                    let k = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(k);
                    for _ in 0..k {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.stack.push(Value::Tuple(items))
                }
                b']' => self.stack.push(Value::List(Vec::new())),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(items))
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?
                }
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b'd' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Dict(Vec::new()));
                    self.set_items(items)?
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?
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
                    self.stack.push(g)
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err(bad(format!("STACK_GLOBAL without strings at offset {at}")));
                    };
                    let g = self.global(&module, &name)?;
                    self.stack.push(g)
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    if !matches!(func, Value::Global { .. }) {
                        return Err(bad(format!("call of a non-global at offset {at}")));
                    }
                    self.stack.push(Value::Call {
                        func: Box::new(func),
                        args: Box::new(args),
                        state: None,
                    })
                }
                b'b' => {
                    let st = self.pop()?;
                    match self.top()? {
                        Value::Call { state, .. } if state.is_none() => *state = Some(Box::new(st)),
                        _ => return Err(bad(format!("BUILD on a non-object at offset {at}"))),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.stack.push(Value::Persistent(Box::new(pid)))
                }
                b'P' => {
                    let s = self.line()?.to_string();
                    self.stack.push(Value::Persistent(Box::new(Value::Str(s))))
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
