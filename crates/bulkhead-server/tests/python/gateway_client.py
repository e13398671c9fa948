"""Drives Bulkhead's /v1/chat/completions with the real `openai` package, as an outside agent
framework would: base URL pointed at Bulkhead, a tenant API key as the OpenAI key.

Usage: gateway_client.py BASE_URL ACME_KEY GLOBEX_KEY
Prints one line per check and exits non-zero on the first failure.
"""

import json
import sys

import openai

base, acme_key, globex_key = sys.argv[1:4]
acme = openai.OpenAI(base_url=f"{base}/v1", api_key=acme_key, max_retries=0)
globex = openai.OpenAI(base_url=f"{base}/v1", api_key=globex_key, max_retries=0)
hello = [{"role": "user", "content": "hello"}]


def check(name, condition, detail=""):
    if not condition:
        print(f"FAIL {name}: {detail}")
        sys.exit(1)
    print(f"ok   {name}")


# Plain gateway, whole: the provider saw acme's own key.
reply = acme.chat.completions.create(model="fast", messages=hello)
check("plain completion", reply.choices[0].message.content == "answered with Bearer sk-acme",
      reply.choices[0].message.content)
check("plain usage", reply.usage.prompt_tokens == 11 and reply.usage.completion_tokens == 4, reply.usage)
reply = globex.chat.completions.create(model="fast", messages=hello)
check("other tenant, own key", reply.choices[0].message.content == "answered with Bearer sk-globex",
      reply.choices[0].message.content)

# Plain gateway, streamed, with usage.
stream = acme.chat.completions.create(model="fast", messages=hello, stream=True,
                                      stream_options={"include_usage": True})
text, usage, chunks = "", None, 0
for chunk in stream:
    chunks += 1
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
    if chunk.usage:
        usage = chunk.usage
check("plain stream text", text == "answered with Bearer sk-acme" and chunks > 3, (text, chunks))
check("plain stream usage", usage is not None and usage.completion_tokens == 4, usage)

# Streamed without usage asked: no usage chunk reaches the client.
stream = acme.chat.completions.create(model="fast", messages=hello, stream=True)
check("no usage unless asked", all(c.usage is None for c in stream))

# Tool-call deltas, streamed, assembled by the client.
tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
stream = acme.chat.completions.create(model="fast", messages=[{"role": "user", "content": "weather?"}],
                                      tools=tools, stream=True)
name, arguments, finish = "", "", None
for chunk in stream:
    for call in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
        name += call.function.name or ""
        arguments += call.function.arguments or ""
    if chunk.choices and chunk.choices[0].finish_reason:
        finish = chunk.choices[0].finish_reason
check("tool call deltas", name == "get_weather" and json.loads(arguments) == {"city": "Oslo"}
      and finish == "tool_calls", (name, arguments, finish))

# An Anthropic model behind an alias, answered in OpenAI's format, whole and streamed.
reply = acme.chat.completions.create(model="claude", messages=hello)
check("anthropic alias", reply.choices[0].message.content == "answered with ak-acme",
      reply.choices[0].message.content)
stream = acme.chat.completions.create(model="claude", messages=hello, stream=True,
                                      stream_options={"include_usage": True})
text, usage = "", None
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
    usage = chunk.usage or usage
check("anthropic alias streamed", text == "answered with ak-acme" and usage.prompt_tokens == 11, (text, usage))

# A hosted agent, whole and streamed.
reply = acme.chat.completions.create(model="agent/helper", messages=hello)
check("agent completion", reply.choices[0].message.content == "answered with Bearer sk-acme"
      and reply.id.startswith("chatcmpl-run_"), reply)
stream = acme.chat.completions.create(model="agent/helper", messages=hello, stream=True,
                                      stream_options={"include_usage": True})
text, usage = "", None
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
    usage = chunk.usage or usage
check("agent streamed", text == "answered with Bearer sk-acme" and usage.completion_tokens == 4, (text, usage))

# Refusals come back as the OpenAI client's typed errors.
try:
    globex.chat.completions.create(model="agent/acme-only", messages=hello)
    check("another tenant's agent", False, "answered")
except openai.NotFoundError as error:
    check("another tenant's agent", error.body["code"] == "agent_not_found", error.body)
try:
    acme.chat.completions.create(model="premium", messages=hello)
    check("model not allowed", False, "answered")
except openai.PermissionDeniedError as error:
    check("model not allowed", error.body["code"] == "model_not_allowed", error.body)
try:
    acme.chat.completions.create(model="gpt-17", messages=hello)
    check("unknown model", False, "answered")
except openai.NotFoundError as error:
    check("unknown model", error.body["code"] == "model_not_found", error.body)
try:
    acme.chat.completions.create(model="fast", messages=[{"role": "user", "content": "status-429"}])
    check("provider rate limit", False, "answered")
except openai.RateLimitError as error:
    check("provider rate limit", error.body["code"] == "provider_rate_limited", error.body)
try:
    openai.OpenAI(base_url=f"{base}/v1", api_key="bhk_nope_nope", max_retries=0).chat.completions.create(
        model="fast", messages=hello)
    check("bad key", False, "answered")
except openai.AuthenticationError as error:
    check("bad key", error.body["code"] == "unauthenticated" and error.body["type"] == "authentication_error",
          error.body)
print("all gateway checks passed")
