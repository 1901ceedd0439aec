"""Math and chart QA with verifiable answers and GLM-4.1V-style reasoning messages.

Part of the demo corpus (`vlmloom.demo.corpus`); every output is a function of the seeded `random.Random` passed in.
"""
from __future__ import annotations

import random
from typing import Any

from PIL import Image, ImageDraw

from vlmloom.demo.common import DemoRecord, load_font
from vlmloom.demo.documents import render_chart
from vlmloom.demo.scenes import backdrop, jitter, join_en

def qa_messages(question: str, reasoning: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"<image>{question}"},
            {"role": "assistant", "content": f"<think>{reasoning}</think><answer>The answer is "
                                             f"<|begin_of_box|>{answer}<|end_of_box|></answer>"}]


def qa_record(rng: random.Random) -> tuple[DemoRecord, Image.Image]:
    if rng.random() < 0.5:
        image, chart = render_chart(rng)
        labels, values = chart["labels"], chart["values"]
        if rng.random() < 0.5:
            i = rng.randrange(len(labels))
            question = rng.choice((
                "What is the value of {label} in the {kind} chart of {metric} in {where}?",
                "In the {kind} chart of {metric} for {where}, which number is shown for {label}?",
                "Read the {kind} chart ({where}): how much {metric} does {label} have?",
            )).format(label=labels[i], kind=chart["type"], metric=chart["metric"], where=chart["where"])
            answer = str(values[i])
            reasoning = f"The bar or point labelled {labels[i]} is annotated with {values[i]}."
        else:
            question = rng.choice((
                "What is the total of the values for {labels} in the chart of {metric} in {where}?",
                "Add up {labels} in this {kind} chart of {metric} ({where}). What is the sum?",
                "The {kind} chart shows {metric} in {where} for {labels}; what do they sum to?",
            )).format(labels=join_en(labels), kind=chart["type"], metric=chart["metric"], where=chart["where"])
            answer = str(sum(values))
            reasoning = "Adding the values: " + " + ".join(map(str, values)) + f" = {sum(values)}."
        domain, data, ext = "chart", image, "png"
        meta_extra: dict[str, Any] = {"chart": chart}
    else:
        a, b, c = rng.randint(2, 60), rng.randint(2, 40), rng.randint(2, 12)
        op = rng.choice(("+", "-", "*"))
        first = {"+": a + b, "-": a - b, "*": a * b}[op]
        second_op = rng.choice(("+", "-"))
        result = first + c if second_op == "+" else first - c
        shown = {"+": "+", "-": "-", "*": "×"}[op]
        expr = f"({a} {shown} {b}) {second_op} {c}"
        question = f"What is {expr}?"
        answer = str(result)
        reasoning = f"First {a} {shown} {b} = {first}. Then {first} {second_op} {c} = {result}."
        w = rng.randint(360, 640)
        h = rng.randint(max(180, w // 2), 360)
        image = backdrop(w, h, jitter(rng.choice(((240, 235, 220), (220, 230, 240), (230, 240, 225), (240, 225, 230))), rng, 10), rng)
        draw = ImageDraw.Draw(image)
        draw.rectangle([rng.randint(0, w // 3), 0, rng.randint(2 * w // 3, w), rng.randint(h // 6, h // 3)], fill=jitter((180, 200, 230), rng, 40))
        draw.text((w // 2 + rng.randint(-30, 30), h // 2 + rng.randint(-20, 20)), f"{expr} = ?", fill=(15, 15, 15),
                  font=load_font(rng.randint(28, 40), bold=True), anchor="mm")
        domain, data, ext, meta_extra = "math", image, "png", {}
    meta = {"question": question, "answer": answer, "domain": domain,
            "messages": qa_messages(question, reasoning, answer), **meta_extra}
    return DemoRecord("qa", question.encode("utf-8"), meta, [(ext, data)], lang="en"), image


# ----------------------------------------------------------------------------------------------
# OCR documents and GUI screens
# ----------------------------------------------------------------------------------------------
