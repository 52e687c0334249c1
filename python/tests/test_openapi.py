"""docs/openapi.yaml is valid YAML whose $refs resolve (needs PyYAML,
Debian's python3-yaml; the Go test TestGatewayOpenAPIDescribesEveryRoute
checks it against the routes the gateway serves)."""

import os
import unittest

try:
    import yaml
except ImportError:
    yaml = None

SPEC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs", "openapi.yaml")


@unittest.skipIf(yaml is None, "PyYAML is not installed")
class OpenAPITest(unittest.TestCase):
    def test_parses_and_refs_resolve(self):
        with open(SPEC) as f:
            doc = yaml.safe_load(f)
        self.assertEqual(doc["openapi"][:2], "3.")
        self.assertIn("/v1/jobs", doc["paths"])
        seen = []

        def walk(o):
            if isinstance(o, dict):
                for k, v in o.items():
                    if k == "$ref":
                        node = doc
                        for part in v.lstrip("#/").split("/"):
                            self.assertIn(part, node, "unresolved $ref " + v)
                            node = node[part]
                        seen.append(v)
                    else:
                        walk(v)
            elif isinstance(o, list):
                for v in o:
                    walk(v)

        walk(doc)
        self.assertTrue(seen)


if __name__ == "__main__":
    unittest.main()
