package tensor

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Open reads the tensor in the file at path, choosing the format by its
// extension: a .npy file, or a .safetensors file that holds exactly one
// tensor. Use Load to name one tensor of a .safetensors file.
func Open(path string) (*Tensor, error) {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".npy":
		return ReadNPY(path)
	case ".safetensors":
		return readOneSafetensor(path, "")
	}
	return nil, fmt.Errorf("%w: %s: unknown file extension %q, want .npy or .safetensors", ErrUnsupported, path, filepath.Ext(path))
}

// Load reads one tensor named by spec, as the CLI's tensor flags take it:
// "file.npy", "file.safetensors" (which must hold exactly one tensor) or
// "file.safetensors:name" (the tensor called name). A spec that names an
// existing file is always taken as a path, so file names may contain ':'.
func Load(spec string) (*Tensor, error) {
	if _, err := os.Stat(spec); err != nil && errors.Is(err, os.ErrNotExist) {
		if i := strings.LastIndexByte(spec, ':'); i > 0 && strings.EqualFold(filepath.Ext(spec[:i]), ".safetensors") {
			return readOneSafetensor(spec[:i], spec[i+1:])
		}
	}
	return Open(spec)
}

// readOneSafetensor reads the tensor called name from a .safetensors file,
// or its only tensor if name is empty.
func readOneSafetensor(path, name string) (*Tensor, error) {
	f, size, err := openRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sf, err := OpenSafetensors(f, size, path)
	if err != nil {
		return nil, err
	}
	if name == "" {
		names := sf.Names()
		if len(names) != 1 {
			return nil, fmt.Errorf("%w: %s holds %d tensors %s, want exactly one or a name as %s:NAME",
				ErrNotFound, path, len(names), listNames(names), path)
		}
		name = names[0]
	}
	return sf.Tensor(name)
}

// listNames formats names for an error message, eliding long lists.
func listNames(names []string) string {
	names = append([]string(nil), names...)
	sort.Strings(names)
	if len(names) > 8 {
		return fmt.Sprintf("%q... (%d more)", names[:8], len(names)-8)
	}
	return fmt.Sprintf("%q", names)
}

// writeFileAtomic writes a file through a temporary file in the same
// directory, synced and renamed into place; on any error the temporary file
// is removed and path is untouched.
func writeFileAtomic(path string, write func(io.Writer) error) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
			err = fmt.Errorf("write %s: %w", path, err)
		}
	}()
	bw := bufio.NewWriterSize(f, 1<<16)
	if err := write(bw); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil { // make the rename durable; best effort
		d.Sync()
		d.Close()
	}
	return nil
}
