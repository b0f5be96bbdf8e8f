"""OTLP interop: every body the gateway exports parses into the official opentelemetry-proto messages.

OTLP/JSON is not protobuf's default JSON mapping: trace and span ids are hex strings (protobuf would expect
base64 for bytes fields), enums are numbers and keys are lowerCamelCase. So each body has its ids turned from
hex into base64, as the OTLP specification describes, before `json_format.Parse`; then the ids must be 16 and
8 bytes long and the spans must link up.
"""
from __future__ import annotations

import base64
import json
import os
import sys
import unittest

from test_gateway import FakeCollector, wait_for
from tests.interop.test_interop import REPO, TIMEOUT, VENV, Gateway

try:
    from google.protobuf import json_format
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
except ImportError:
    json_format = None

FAKE_SERVER = os.path.join(REPO, "tests", "fake_mcp_server.py")
ID_KEYS = ("traceId", "spanId", "parentSpanId")


def with_base64_ids(value):
    """A copy of an OTLP/JSON body with its hex ids written as protobuf JSON writes bytes."""
    if isinstance(value, dict):
        return {key: base64.b64encode(bytes.fromhex(item)).decode() if key in ID_KEYS else with_base64_ids(item)
                for key, item in value.items()}
    if isinstance(value, list):
        return [with_base64_ids(item) for item in value]
    return value


@unittest.skipUnless(json_format is not None and VENV, "HMG_INTEROP_VENV unset or opentelemetry-proto missing")
class OtlpProtoTest(unittest.TestCase):
    def test_exported_bodies_parse_as_otlp_protobuf(self):
        collector = FakeCollector(self)
        gateway = Gateway(self, [{"server_id": "fake", "command": sys.executable, "args": [FAKE_SERVER],
                                  "autostart": True}],
                          env={"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "50",
                               "OTEL_METRIC_EXPORT_INTERVAL": "100"})
        traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        for n in range(3):
            status, reply = gateway.request("POST", "/fake/rpc", {"jsonrpc": "2.0", "id": n, "method": "tools/call",
                                                                  "params": {"name": "add", "arguments": {"a": n, "b": 1}}},
                                            headers={"traceparent": traceparent})
            self.assertEqual(status, 200, reply)

        def parsed_spans():
            spans = []
            for body in collector.bodies("/v1/traces"):
                request = json_format.Parse(json.dumps(with_base64_ids(body)), ExportTraceServiceRequest())
                spans += [span for resource in request.resource_spans for scope in resource.scope_spans
                          for span in scope.spans]
            return len([s for s in spans if s.name == "tools/call add"]) == 3 and spans
        spans = wait_for(parsed_spans, "three tools/call spans", TIMEOUT)
        by_id = {span.span_id: span for span in spans}
        for span in spans:
            self.assertEqual((len(span.trace_id), len(span.span_id)), (16, 8))
            self.assertLessEqual(span.start_time_unix_nano, span.end_time_unix_nano)
        for span in (s for s in spans if s.name == "tools/call add"):
            server = by_id[span.parent_span_id]
            self.assertEqual((span.kind, server.kind), (3, 2))  # CLIENT under SERVER
            self.assertEqual(span.trace_id.hex(), "4bf92f3577b34da6a3ce929d0e0e4736")
            self.assertEqual(server.parent_span_id.hex(), "00f067aa0ba902b7")

        def parsed_metrics():
            for body in reversed(collector.bodies("/v1/metrics")):
                request = json_format.Parse(json.dumps(with_base64_ids(body)), ExportMetricsServiceRequest())
                metrics = {m.name: m for r in request.resource_metrics for s in r.scope_metrics for m in s.metrics}
                client = metrics.get("mcp.client.operation.duration")
                if client and sum(p.count for p in client.histogram.data_points) >= 3:
                    return metrics
            return None
        metrics = wait_for(parsed_metrics, "metrics with three client operations", TIMEOUT)
        for name in ("http.server.request.duration", "mcp.server.operation.duration", "mcp.client.operation.duration"):
            histogram = metrics[name].histogram
            self.assertEqual(histogram.aggregation_temporality, 2)  # cumulative
            for point in histogram.data_points:
                self.assertEqual(len(point.bucket_counts), len(point.explicit_bounds) + 1)
                self.assertEqual(sum(point.bucket_counts), point.count)
        self.assertTrue(metrics["host_mcp_gateway.requests"].sum.is_monotonic)
        self.assertFalse(metrics["host_mcp_gateway.calls.in_flight"].sum.is_monotonic)  # an up-down counter
