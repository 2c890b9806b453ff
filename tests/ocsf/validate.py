"""Validates OCSF events (JSON lines on stdin) against the OCSF schema release their
metadata.version names, as shipped by the `ocsf-json-schema` package. Exits non-zero and
prints every violation when one event does not conform."""
import json
import sys

import jsonschema
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema


def main() -> int:
    schemas = {}
    failures = 0
    count = 0
    for number, line in enumerate(sys.stdin, 1):
        line = line.strip()
        if not line:
            continue
        count += 1
        event = json.loads(line)
        version = event.get("metadata", {}).get("version")
        if version not in schemas:
            schemas[version] = OcsfJsonSchemaEmbedded(get_ocsf_schema(version=version))
        schema = schemas[version]
        class_name = schema.lookup_class_name_from_uid(event["class_uid"])
        profiles = event.get("metadata", {}).get("profiles", [])
        validator = jsonschema.Draft202012Validator(schema.get_class_schema(class_name, profiles))
        errors = sorted(validator.iter_errors(event), key=lambda error: list(error.path))
        for error in errors:
            failures += 1
            path = ".".join(str(part) for part in error.path) or "(event)"
            print(f"line {number} ({class_name}): {path}: {error.message}")
    print(f"{count} events checked against OCSF, {failures} violations")
    return 1 if failures or count == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
