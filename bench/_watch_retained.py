"""Separate subscriber process for the benchmarks: reports when the broker holds a manifest.

Usage: python bench/_watch_retained.py PORT MANIFEST_JSON FILTER
Reads lines "go" on stdin; answers each with the time.monotonic() (system-wide on Linux) at
which every topic in the manifest carried the manifest's sha256. Publishes seen since the last
"go" are counted, so the caller can also check that nothing was published.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def main() -> None:
    port, manifest_path, topic_filter = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    lock = threading.Lock()
    state: dict[str, str] = {}
    want: dict[str, str] = {}
    done = threading.Event()
    live = [0]
    matched: set[str] = set()

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        payload = message.payload
        sha = ""
        if payload:
            start = payload.find(b'"sha256":"')
            sha = payload[start + 10 : start + 74].decode() if start >= 0 else "?"
        with lock:
            if not message.retain:
                live[0] += 1
            state[message.topic] = sha
            if message.topic in want:
                if want[message.topic] == sha:
                    matched.add(message.topic)
                else:
                    matched.discard(message.topic)
                if len(matched) == len(want):
                    done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe(topic_filter, qos=0)
    client.loop_start()
    print("ready", flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "quit":
            break
        with open(manifest_path, encoding="utf-8") as handle:
            manifest = json.load(handle)
        with lock:
            want.clear()
            want.update(manifest)
            matched.clear()
            matched.update(t for t, s in want.items() if state.get(t) == s)
            live[0] = 0
            done.clear()
            if len(matched) == len(want):
                done.set()
        done.wait(timeout=float(command.split()[1]) if " " in command else 60.0)
        print(
            json.dumps({"at": time.monotonic(), "complete": done.is_set(), "live": live[0]}),
            flush=True,
        )
    client.loop_stop()


if __name__ == "__main__":
    main()
