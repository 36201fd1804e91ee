from picovlm.data.batches import CAPTION_PROMPT
from picovlm.data.grouping import group_by_image
from picovlm.data.records import Sample
from picovlm.text.tokens import IMAGE


def chat(image: str, *qa: str, types: list[str] | None = None) -> Sample:
    messages = []
    for k in range(0, len(qa), 2):
        question = f"{IMAGE}\n{qa[k]}" if k == 0 else qa[k]
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": qa[k + 1]}]
    return Sample([image], messages, {"kind": "chat", "question_types": types or ["q"] * (len(qa) // 2)})


def caption(image: str, text: str) -> Sample:
    return Sample([image], [{"role": "assistant", "content": text}], {"kind": "caption"})


def test_records_of_one_image_become_one_conversation_in_order():
    samples = [
        chat("a.png", "Q1?", "A1"),
        chat("b.png", "Q2?", "A2"),
        chat("a.png", "Q3?", "A3"),
        caption("a.png", "C"),
    ]
    grouped = group_by_image(samples)
    assert len(grouped) == 2
    a = grouped[0]
    assert a.images == ["a.png"]
    assert [m["content"] for m in a.messages] == [f"{IMAGE}\nQ1?", "A1", "Q3?", "A3", CAPTION_PROMPT, "C"]
    assert a.meta["question_types"] == ["q", "q", "caption"]
    assert a.meta["records"] == 3
    assert sum(m["content"].count(IMAGE) for m in a.messages) == 1  # the image appears once


def test_a_caption_first_gets_the_caption_prompt_with_the_placeholder():
    grouped = group_by_image([caption("a.png", "C"), chat("a.png", "Q?", "A")])
    assert [m["content"] for m in grouped[0].messages] == [f"{IMAGE}\n{CAPTION_PROMPT}", "C", "Q?", "A"]


def test_a_group_that_would_not_fit_continues_in_a_new_conversation():
    samples = [chat("a.png", f"Q{i}?", f"A{i}") for i in range(5)]
    grouped = group_by_image(samples, fits=lambda s: len(s.messages) <= 4)  # two turns per conversation
    assert [len(s.messages) // 2 for s in grouped] == [2, 2, 1]
    assert all(s.messages[0]["content"].startswith(IMAGE) for s in grouped)
    assert [m["content"] for s in grouped for m in s.messages if m["role"] == "assistant"] == [
        f"A{i}" for i in range(5)
    ]


def test_records_without_images_and_with_other_image_lists_stay_apart():
    text = Sample([], [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], {"kind": "chat"})
    two = Sample(["a.png", "b.png"], chat("a.png", "Q?", "A").messages, {"kind": "chat"})
    grouped = group_by_image([text, chat("a.png", "Q?", "A"), two])
    assert len(grouped) == 3
    assert grouped[0] is text
