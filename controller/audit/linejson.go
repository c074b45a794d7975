package audit

import (
	"encoding/hex"
	"strconv"
	"time"
	"unicode/utf8"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// appendLine appends rec's line (LineOf(rec).Marshal(), byte for byte)
// to b. Every controller writes one for every command it applies, so this
// is written out by hand: encoding/json's reflection, the hex strings and
// the time string were a fifth of what the audit trail allocated per
// create (TestAppendLineIsJSONMarshal holds the two to the same bytes).
func appendLine(b []byte, rec *statev1.AuditRecord) []byte {
	c := rec.GetContext()
	b = append(b, `{"seq":`...)
	b = strconv.AppendUint(b, rec.GetSeq(), 10)
	b = append(b, `,"prev":"`...)
	b = hex.AppendEncode(b, rec.GetPrevHash())
	b = append(b, `","hash":"`...)
	b = hex.AppendEncode(b, rec.GetHash())
	b = append(b, `","time":"`...)
	b = time.Unix(0, rec.GetUnixNano()).UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","unix_nano":`...)
	b = strconv.AppendInt(b, rec.GetUnixNano(), 10)
	b = append(b, `,"index":`...)
	b = strconv.AppendUint(b, rec.GetIndex(), 10)
	b = append(b, `,"kind":`...)
	b = appendJSONString(b, rec.GetKind())
	if v := rec.GetEventUnixNano(); v != 0 {
		b = append(b, `,"event_unix_nano":`...)
		b = strconv.AppendInt(b, v, 10)
	}
	opt := func(name, v string) {
		if v != "" {
			b = append(b, ',', '"')
			b = append(b, name...)
			b = append(b, '"', ':')
			b = appendJSONString(b, v)
		}
	}
	opt("request_id", rec.GetRequestId())
	opt("actor", c.GetActor())
	opt("role", c.GetRole())
	opt("department", c.GetDepartment())
	opt("source", c.GetSource())
	opt("token_id", c.GetTokenId())
	opt("action", c.GetAction())
	opt("target", c.GetTarget())
	opt("params", c.GetParams())
	opt("result", rec.GetResult())
	opt("code", rec.GetCode())
	opt("message", rec.GetMessage())
	return append(b, '}', '\n')
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s quoted as encoding/json quotes a string (HTML
// characters escaped, invalid UTF-8 replaced, U+2028 and U+2029 escaped).
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
