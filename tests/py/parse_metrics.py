#!/usr/bin/python3
"""Parses Prometheus's text exposition format from standard input with python3-prometheus-client's own parser
(it raises on anything malformed) and prints the families as JSON: {name: {"type", "help", "samples": [[name,
labels, value], ...]}}."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

families = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    families[f.name] = {
        "type": f.type,
        "help": f.documentation,
        "samples": [[s.name, s.labels, s.value] for s in f.samples],
    }
json.dump(families, sys.stdout)
