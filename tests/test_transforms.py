from nativevlm.data.sample import Sample
from nativevlm.data.transforms import merge_turns_by_image


def qa(i, image, q, a):
    return Sample(id=f"s{i}", messages=[{"role": "user", "content": f"<image>\n{q}"},
                                        {"role": "assistant", "content": a}], images=[image], meta={"family": f"f{i}"})


def test_merge_keeps_every_exchange_once_and_one_marker():
    samples = [qa(i, f"img{i % 3}.png", f"q{i}?", f"a{i}") for i in range(10)]
    text_only = Sample(id="t", messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    merged = merge_turns_by_image(samples + [text_only], max_turns=3)
    pairs = sorted((m["content"].replace("<image>\n", ""), n["content"])
                   for s in merged for m, n in zip(s.messages[::2], s.messages[1::2]))
    assert pairs == sorted([(f"q{i}?", f"a{i}") for i in range(10)] + [("hi", "yo")])
    for s in merged:
        assert sum(m["content"].count("<image>") for m in s.messages) == len(s.images)
        assert len(s.messages) <= 6
    assert sum(len(s.meta.get("families", [])) for s in merged) == 10
    assert merged[-1] is text_only


def test_merge_is_seeded():
    samples = [qa(i, "a.png", f"q{i}?", f"a{i}") for i in range(6)]
    assert merge_turns_by_image(samples, seed=1) == merge_turns_by_image(samples, seed=1)
