package tensor

import (
	"fmt"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// jsonScanner reads the JSON subset a .safetensors header uses: objects,
// arrays, strings, non-negative integers and null. It is strict (RFC 8259
// syntax, no trailing commas, no lone surrogates) and allocates only the
// strings and slices it returns, so a hostile header cannot make parsing
// cost much more memory than the header itself. Positions in errors are
// byte offsets into the header.
type jsonScanner struct {
	s []byte
	i int
}

func (p *jsonScanner) ws() {
	for p.i < len(p.s) {
		switch p.s[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *jsonScanner) peek() byte {
	if p.i < len(p.s) {
		return p.s[p.i]
	}
	return 0
}

// describe names the value that starts at the current position.
func (p *jsonScanner) describe() string {
	if p.i >= len(p.s) {
		return "the end of the header"
	}
	switch c := p.s[p.i]; {
	case c == '"':
		q := *p
		if s, err := q.str(""); err == nil {
			if len(s) > 40 {
				s = s[:40] + "..."
			}
			return "string " + strconv.Quote(s)
		}
		return "a malformed string"
	case c == '-' || c >= '0' && c <= '9':
		q := *p
		n := q.number()
		if len(n) > 30 {
			return "number " + string(n[:30]) + "..."
		}
		return "number " + string(n)
	case c == 't' || c == 'f' || c == 'n':
		for _, w := range []string{"true", "false", "null"} {
			if len(p.s)-p.i >= len(w) && string(p.s[p.i:p.i+len(w)]) == w {
				return w
			}
		}
	}
	return strconv.QuoteRune(rune(p.s[p.i]))
}

func (p *jsonScanner) unexpected(want string) error {
	return fmt.Errorf("byte %d: found %s, want %s", p.i, p.describe(), want)
}

// delim consumes the delimiter c after optional whitespace.
func (p *jsonScanner) delim(c byte, want string) error {
	p.ws()
	if p.peek() != c {
		return p.unexpected(want)
	}
	p.i++
	return nil
}

// elem reports whether element n of the open object or array follows,
// consuming the comma before it; when none follows it consumes the closing
// delimiter.
func (p *jsonScanner) elem(close byte, n int, what string) (bool, error) {
	p.ws()
	if p.peek() == close {
		p.i++
		return false, nil
	}
	if n == 0 {
		return true, nil
	}
	if p.peek() != ',' {
		return false, p.unexpected(fmt.Sprintf("',' or '%c' in %s", close, what))
	}
	p.i++
	p.ws()
	if p.peek() == close {
		return false, p.unexpected("a value after ',' (no trailing commas)")
	}
	return true, nil
}

// colon consumes a ':' after optional whitespace, reporting whether there
// was one (callers name the key in their error).
func (p *jsonScanner) colon() bool {
	p.ws()
	if p.peek() != ':' {
		return false
	}
	p.i++
	return true
}

// null consumes a null literal if one is next.
func (p *jsonScanner) null() bool {
	p.ws()
	if len(p.s)-p.i >= 4 && string(p.s[p.i:p.i+4]) == "null" {
		p.i += 4
		return true
	}
	return false
}

// raw reads a string and returns its bytes without copying when it has no
// escapes (the common case), else its decoded copy.
func (p *jsonScanner) raw(want string) ([]byte, error) {
	p.ws()
	if p.peek() != '"' {
		return nil, p.unexpected(want)
	}
	j := p.i + 1
	for j < len(p.s) && p.s[j] != '"' && p.s[j] != '\\' && p.s[j] >= 0x20 {
		j++
	}
	if j < len(p.s) && p.s[j] == '"' {
		b := p.s[p.i+1 : j]
		p.i = j + 1
		return b, nil
	}
	s, err := p.str(want)
	return []byte(s), err
}

// str reads a string; want describes what was expected, for the error.
func (p *jsonScanner) str(want string) (string, error) {
	p.ws()
	if p.peek() != '"' {
		return "", p.unexpected(want)
	}
	start := p.i
	p.i++
	j := p.i
	for j < len(p.s) && p.s[j] != '"' && p.s[j] != '\\' && p.s[j] >= 0x20 {
		j++
	}
	if j < len(p.s) && p.s[j] == '"' { // no escapes
		s := string(p.s[p.i:j])
		p.i = j + 1
		return s, nil
	}
	b := append([]byte(nil), p.s[p.i:j]...)
	p.i = j
	for p.i < len(p.s) {
		c := p.s[p.i]
		switch {
		case c == '"':
			p.i++
			return string(b), nil
		case c < 0x20:
			return "", fmt.Errorf("byte %d: control character %q in a string, want it escaped", p.i, c)
		case c != '\\':
			b = append(b, c)
			p.i++
			continue
		}
		if p.i+1 >= len(p.s) {
			break
		}
		e := p.s[p.i+1]
		p.i += 2
		switch e {
		case '"', '\\', '/':
			b = append(b, e)
		case 'b':
			b = append(b, '\b')
		case 'f':
			b = append(b, '\f')
		case 'n':
			b = append(b, '\n')
		case 'r':
			b = append(b, '\r')
		case 't':
			b = append(b, '\t')
		case 'u':
			r, err := p.hex4()
			if err != nil {
				return "", err
			}
			if utf16.IsSurrogate(r) {
				lo := rune(-1)
				if len(p.s)-p.i >= 6 && p.s[p.i] == '\\' && p.s[p.i+1] == 'u' {
					p.i += 2
					if lo, err = p.hex4(); err != nil {
						return "", err
					}
				}
				if r = utf16.DecodeRune(r, lo); r == utf8.RuneError {
					return "", fmt.Errorf("byte %d: lone UTF-16 surrogate in a \\u escape, want a valid pair", p.i)
				}
			}
			b = utf8.AppendRune(b, r)
		default:
			return "", fmt.Errorf("byte %d: invalid escape %q in a string", p.i-2, string(p.s[p.i-2:p.i]))
		}
	}
	return "", fmt.Errorf("byte %d: string has no closing quote", start)
}

func (p *jsonScanner) hex4() (rune, error) {
	if len(p.s)-p.i < 4 {
		return 0, fmt.Errorf("byte %d: \\u escape needs 4 hex digits", p.i)
	}
	v, err := strconv.ParseUint(string(p.s[p.i:p.i+4]), 16, 16)
	if err != nil {
		return 0, fmt.Errorf("byte %d: \\u escape needs 4 hex digits, found %q", p.i, p.s[p.i:p.i+4])
	}
	p.i += 4
	return rune(v), nil
}

// number consumes the characters of a JSON number and returns them (possibly
// malformed; callers validate).
func (p *jsonScanner) number() []byte {
	start := p.i
	for p.i < len(p.s) {
		switch c := p.s[p.i]; {
		case c >= '0' && c <= '9', c == '-', c == '+', c == '.', c == 'e', c == 'E':
			p.i++
			continue
		}
		break
	}
	return p.s[start:p.i]
}

// count reads a non-negative integer, element i of the array field.
func (p *jsonScanner) count(field string, i int) (int64, error) {
	p.ws()
	if c := p.peek(); c != '-' && (c < '0' || c > '9') {
		return 0, p.unexpected(fmt.Sprintf("%s[%d] as a non-negative integer", field, i))
	}
	lit := p.number()
	valid := len(lit) <= 19 && (lit[0] != '0' || len(lit) == 1)
	for _, c := range lit {
		valid = valid && c >= '0' && c <= '9'
	}
	if v, err := strconv.ParseInt(string(lit), 10, 64); valid && err == nil {
		return v, nil
	}
	return 0, fmt.Errorf("%s[%d] is %s, want a non-negative integer below 2^63", field, i, lit)
}
