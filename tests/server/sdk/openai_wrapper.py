"""Run by the official SDK's venv: the SDK's OpenAI wrapper (`memfuse.llm.OpenAI`) chatting
through a running `memfuse serve`. The OpenAI API is remote and cannot run here, so a local
stand-in of its chat completions endpoint answers (a test double for the remote LLM only):
it records the prompts it receives, so the memory the wrapper retrieved can be checked."""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from memfuse.llm import OpenAI

from memfuse import MemFuse

base_url, admin_key = sys.argv[1], sys.argv[2]
prompts: list[list[dict]] = []


class FakeChatCompletions(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.path.endswith("/chat/completions"), self.path
        prompts.append(body["messages"])
        reply = f"Noted ({len(prompts)})."
        answer = {
            "id": f"chatcmpl-{len(prompts)}",
            "object": "chat.completion",
            "created": 1700000000,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
        payload = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


llm = ThreadingHTTPServer(("127.0.0.1", 0), FakeChatCompletions)
threading.Thread(target=llm.serve_forever, daemon=True).start()
llm_url = f"http://127.0.0.1:{llm.server_address[1]}/v1"

memory = MemFuse(base_url=base_url, api_key=admin_key).init(user="carol", session="pets")
chat = OpenAI(api_key="sk-local-stand-in", base_url=llm_url, memory=memory)
first = chat.chat.completions.create(
    model="gpt-4o-mini", messages=[{"role": "user", "content": "My dog is called Rex"}]
)
assert first.choices[0].message.content == "Noted (1)."
stored = memory.list_messages(limit=10)["data"]["messages"]
assert [(m["role"], m["content"]) for m in reversed(stored)] == [
    ("user", "My dog is called Rex"),
    ("assistant", "Noted (1)."),
]
chat.chat.completions.create(
    model="gpt-4o-mini", messages=[{"role": "user", "content": "What is my dog called?"}]
)
second_prompt = prompts[-1]
memory_notes = [
    m["content"] for m in second_prompt if m["role"] == "system" and "Rex" in m["content"]
]
assert memory_notes, second_prompt  # retrieved through the server's query, not only history
assert len(memory.list_messages(limit=10)["data"]["messages"]) == 4
llm.shutdown()
sys.stdout.write(
    json.dumps({"ok": True, "llm_calls": len(prompts), "memory_notes": len(memory_notes)}) + "\n"
)
