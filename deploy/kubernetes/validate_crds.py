"""Validates CRD resources (the PodMonitor) against the local schemas in schemas/,
with the jsonschema and PyYAML that kubernetes-validate installs. kubernetes-validate
itself only has the core Kubernetes schemas. Run with the venv's python:
    target/tools/venv/bin/python deploy/kubernetes/validate_crds.py deploy/kubernetes/podmonitor.yaml"""
import json
import os
import sys

import jsonschema
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
rc = 0
for path in sys.argv[1:]:
    with open(path) as f:
        for doc in yaml.safe_load_all(f):
            if not doc:
                continue
            schema_file = os.path.join(HERE, "schemas", doc["kind"].lower() + ".json")
            with open(schema_file) as s:
                schema = json.load(s)
            errors = list(jsonschema.Draft202012Validator(schema).iter_errors(doc))
            for e in errors:
                print("ERROR %s %s/%s: %s: %s" % (path, doc["kind"], doc["metadata"]["name"],
                                                 ".".join(map(str, e.path)), e.message))
            if errors:
                rc = 1
            else:
                print("INFO %s passed for resource %s/%s against %s" % (path, doc["kind"].lower(),
                                                                     doc["metadata"]["name"], schema_file))
sys.exit(rc)
