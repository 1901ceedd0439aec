"""`llava` (also `sharegpt`, `conversations`): conversation rows → kind `qa` with `messages`.

Accepted row shapes (a `.json` file holding a list, JSONL, Parquet, or HF `datasets` rows):
  LLaVA / ShareGPT   `conversations: [{from: human|gpt|system, value}]`, `<image>` placeholders kept in the text
  OpenAI-style       `messages: [{role, content}]` (content a string, or a list of {type: text|image, text})
  Alpaca-style       `instruction`, `input`, `output` → one user turn (instruction, blank line, input) and the answer
Images: `image` (one) or `images` (a list): paths resolved against `inputs[].image_root` (else the file's folder)
under the manifest path rules, http(s) URLs left to the download stage, image structs ({bytes, path}) as their
bytes. Other fields → meta.
"""
from __future__ import annotations

from typing import Any

from vlmloom.curation.formats import ReadContext, RowFormat, carry_rest, new_sample, register
from vlmloom.curation.formats.documents import document_image
from vlmloom.curation.readers import InvalidRecord
from vlmloom.schemas.records import ImageRef, Message, Sample

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
         "bot": "assistant", "system": "system"}
IMAGE_PLACEHOLDER = "<image>"


def conversation_messages(row: dict[str, Any], where: str) -> tuple[list[Message], set[str]]:
    """(messages, the fields they came from) of a LLaVA/ShareGPT, OpenAI or Alpaca row."""
    if row.get("conversations") is not None:
        turns, speaker, said, used = row["conversations"], "from", "value", {"conversations"}
    elif row.get("messages") is not None:
        turns, speaker, said, used = row["messages"], "role", "content", {"messages"}
    elif row.get("instruction") is not None:
        prompt = _string(row["instruction"], "instruction", where)
        extra = _string(row.get("input") or "", "input", where)
        answer = _string(row.get("output") or "", "output", where)
        messages = [Message("user", f"{prompt}\n\n{extra}" if extra else prompt)]
        if answer:
            messages.append(Message("assistant", answer))
        return messages, {"instruction", "input", "output"}
    else:
        raise InvalidRecord("invalid_field", f"{where}: no 'conversations', 'messages' or 'instruction' field")
    if not isinstance(turns, (list, tuple)):
        raise InvalidRecord("invalid_field", f"{where}: field {next(iter(used))!r} must be a list of turns")
    messages = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise InvalidRecord("invalid_field", f"{where}: turn {index} is {type(turn).__name__}, expected an object")
        who = turn.get(speaker)
        role = ROLES.get(who.lower()) if isinstance(who, str) else None
        if role is None:
            raise InvalidRecord("unknown_role", f"{where}: turn {index} has {speaker} {who!r}; expected one of "
                                                f"{sorted(ROLES)}")
        messages.append(Message(role, _content(turn.get(said), f"{where}: turn {index}")))
    return messages, used


def _content(value: Any, where: str) -> str:
    """A turn's text; an OpenAI content list becomes its text parts with `<image>` where its images are."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for part in value:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif kind in ("image", "image_url"):
                parts.append(IMAGE_PLACEHOLDER)
            else:
                raise InvalidRecord("invalid_field", f"{where}: content part {part!r:.80} is not text or image")
        return "\n".join(parts)
    raise InvalidRecord("invalid_field", f"{where}: content is {type(value).__name__}, expected text")


def _string(value: Any, name: str, where: str) -> str:
    if isinstance(value, str):
        return value
    raise InvalidRecord("invalid_field", f"{where}: field {name!r} is {type(value).__name__}, expected text")


def row_images(row: dict[str, Any], path: str, ctx: ReadContext, where: str) -> tuple[list[ImageRef], set[str]]:
    """The images a row names in `image` / `images` (paths, or image structs already turned into ImageRefs)."""
    images: list[ImageRef] = []
    used = set()
    for name in ("image", "images"):
        value = row.get(name)
        if value is None:
            continue
        used.add(name)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, ImageRef):
                images.append(item)
            elif (isinstance(item, str) and item) or isinstance(item, dict):  # a path, a URL, an image struct
                images.append(document_image(item, path, ctx, where))
            elif item is not None and item != "":
                raise InvalidRecord("invalid_field", f"{where}: field {name!r} holds a {type(item).__name__}, "
                                                     "expected an image path")
    return images, used


class Conversations(RowFormat):
    name = "llava"
    uses = ("id", "image", "images", "conversations", "messages", "instruction", "input", "output")

    def matches(self, row: dict[str, Any]) -> bool:
        return isinstance(row.get("conversations"), list) or isinstance(row.get("messages"), list) or (
            "instruction" in row and "output" in row)

    def row_to_sample(self, row: dict[str, Any], where: str, path: str, ctx: ReadContext,
                      image_columns: frozenset = frozenset()) -> Sample:
        messages, used = conversation_messages(row, where)
        images, image_fields = row_images(row, path, ctx, where)
        meta = carry_rest(row, used | image_fields | {"id"}, ctx)
        return new_sample(ctx, self.source_id(row, where), kind="qa", images=images, messages=messages, meta=meta)


register(Conversations())
