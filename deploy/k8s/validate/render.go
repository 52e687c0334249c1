package validate

import (
	"fmt"

	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// Object is one rendered object: its identity, its YAML as kustomize
// printed it, and (after Decode) its typed form.
type Object struct {
	APIVersion string
	Kind       string
	Name       string
	Namespace  string
	YAML       []byte
	// Typed is a pointer to the k8s.io/api type (or this package's CRD
	// struct) that YAML decoded into strictly.
	Typed any
}

// ID names the object in messages: Kind/namespace/name.
func (o Object) ID() string {
	if o.Namespace == "" {
		return o.Kind + "/" + o.Name
	}
	return o.Kind + "/" + o.Namespace + "/" + o.Name
}

// Render builds the kustomization in dir with the kustomize Go API, as
// `kustomize build dir` does (default options: files only from inside the
// kustomization roots, no plugins, no network), and returns its objects
// undecoded.
func Render(dir string) ([]Object, error) {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrRender, dir, err)
	}
	var objs []Object
	for _, r := range m.Resources() {
		y, err := r.AsYAML()
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %s: %w", ErrRender, dir, r.CurId(), err)
		}
		gvk := r.GetGvk()
		objs = append(objs, Object{
			APIVersion: gvk.ApiVersion(),
			Kind:       gvk.Kind,
			Name:       r.GetName(),
			Namespace:  r.GetNamespace(),
			YAML:       y,
		})
	}
	return objs, nil
}

// Load renders dir and decodes every object strictly; it returns all the
// decode errors joined, not only the first.
func Load(dir string) ([]Object, error) {
	objs, err := Render(dir)
	if err != nil {
		return nil, err
	}
	var errs []error
	for i := range objs {
		if err := Decode(&objs[i]); err != nil {
			errs = append(errs, err)
		}
	}
	return objs, joinErrors(errs)
}
