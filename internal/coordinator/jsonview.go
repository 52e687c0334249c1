package coordinator

import (
	"encoding/json"
	"net/http"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// The ops JSON (/v1/*) is for people and scripts: field names as in the
// .proto, every field present, 64-bit integers as JSON numbers (protojson
// writes them as strings), and enum values by their short lowercase name
// ("running", not "JOB_STATE_RUNNING"; "bf16", "attention"). ?format=proto
// gives the canonical protobuf JSON mapping instead.

// plainJSON converts m to plain JSON values.
func plainJSON(m protoreflect.Message) map[string]any {
	out := map[string]any{}
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		name := string(fd.Name())
		v := m.Get(fd)
		switch {
		case fd.IsList():
			l := v.List()
			a := make([]any, 0, l.Len())
			for k := range l.Len() {
				a = append(a, plainValue(fd, l.Get(k)))
			}
			out[name] = a
		case fd.IsMap():
			mp := map[string]any{}
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				mp[k.String()] = plainValue(fd.MapValue(), mv)
				return true
			})
			out[name] = mp
		case fd.Kind() == protoreflect.MessageKind && !m.Has(fd):
			out[name] = nil
		default:
			out[name] = plainValue(fd, v)
		}
	}
	return out
}

func plainValue(fd protoreflect.FieldDescriptor, v protoreflect.Value) any {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return plainJSON(v.Message())
	case protoreflect.EnumKind:
		return enumName(fd.Enum(), v.Enum())
	case protoreflect.BytesKind:
		return v.Bytes()
	default:
		return v.Interface() // bool, string, int32/64, uint32/64, float, double
	}
}

// enumName is a value's name without the prefix its enum's values share
// (the *_UNSPECIFIED zero value's), lowercase: JOB_STATE_RUNNING -> running.
func enumName(ed protoreflect.EnumDescriptor, n protoreflect.EnumNumber) string {
	vd := ed.Values().ByNumber(n)
	if vd == nil {
		return "" // a value this build does not know
	}
	name := string(vd.Name())
	if z := ed.Values().ByNumber(0); z != nil {
		name = strings.TrimPrefix(name, strings.TrimSuffix(string(z.Name()), "UNSPECIFIED"))
	}
	return strings.ToLower(name)
}

// writeJSON writes m as plain JSON, or as protobuf JSON when the request
// asks for ?format=proto.
func writeJSON(w http.ResponseWriter, r *http.Request, code int, m proto.Message) {
	switch f := r.URL.Query().Get("format"); f {
	case "", "json":
	case "proto":
		writeProto(w, code, m)
		return
	default:
		writeJSONError(w, http.StatusBadRequest, "format", "\""+f+"\": want json (default) or proto")
		return
	}
	data, err := json.Marshal(plainJSON(m.ProtoReflect()))
	if err != nil {
		writeJSONError(w, http.StatusInternalServerError, "", err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(data)
}
