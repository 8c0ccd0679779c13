"""VLRM per-token returns: Table 1 of the paper token by token, the penalty rules and their token mapping."""
from __future__ import annotations

import torch

from tasks.caption_rl.vlrm.bad_phrases import TABLE1_BAD_PHRASES, VLRM_BAD_PHRASES
from tasks.caption_rl.vlrm.penalties import PenaltyRules, decode_pieces, token_spans, vlrm_returns

TABLE1 = "an image of a man in green shirt and green shirt is talking about a car".split()
#                 an image of  a  man in green shirt and green shirt is talking about a  car eos
TABLE1_BAD = [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0]
TABLE1_REPEAT = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
TABLE1_OFFSET = [-7, -6, -5, -4, -4, -4, -4, -4, -4, -4, -4, -3, -2, -1, 0, 0, 0]


def _pieces(words):
    return [words[0]] + [" " + w for w in words[1:]] + [""]   # "" = the eos token (decodes to nothing)


def test_table1_token_by_token():
    rules = PenaltyRules(bad_phrases=TABLE1_BAD_PHRASES)
    pieces = _pieces(TABLE1)
    bad, rep = rules.penalties(pieces)
    assert bad == TABLE1_BAD
    assert rep == TABLE1_REPEAT          # the second "shirt"; "green" (a colour) and "a" (an article) are exempt
    r0, r1 = -2.5, 4.0                   # ref (mean log-prob) and sim
    n = len(pieces)
    got = vlrm_returns(torch.tensor([r1]), torch.tensor([r0]), torch.tensor([0.0]),
                       torch.tensor([[b + r for b, r in zip(bad, rep)]], dtype=torch.float), torch.ones(1, n))
    torch.testing.assert_close(got[0], torch.tensor([r0 + r1 + o for o in TABLE1_OFFSET]))


def test_table1_with_the_full_table6_list():
    bad, _ = PenaltyRules().penalties(_pieces(TABLE1))
    # Table 6 holds "an image of" and "talking about" (not "is talking about"), "a man" is fine
    assert bad == [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0]
    assert len(VLRM_BAD_PHRASES) == 212 and "a spherical view of" in VLRM_BAD_PHRASES


def test_subword_tokens_years_and_exceptions():
    rules = PenaltyRules(bad_phrases=("a video of",))
    pieces = ["A", " Video", " of", " a", " red", " car", " and", " a", " red", " car", " in", " 19", "93", " in",
              " the", " sh", "irt", ",", " sh", "irt", " sh", "irts", ""]
    bad, rep = rules.penalties(pieces)
    assert bad[:3] == [1, 1, 1]                      # case-insensitive phrase
    assert bad[11:13] == [1, 1]                      # both tokens of the year 1993
    assert sum(bad) == 5
    assert rep[9] == 1 and rep[8] == 0 and rep[7] == 0 and rep[13] == 0   # "car" again; "red", "a", "in" exempt
    assert rep[15:17] == [0, 0] and rep[18:20] == [1, 1]                  # both pieces of the second "shirt"
    assert rep[20:22] == [0, 0]                                           # "shirts" is another word
    assert sum(rep) == 3


def test_whole_words_only_and_switches():
    rules = PenaltyRules(bad_phrases=("tv", "cam"))
    bad, _ = rules.penalties(["a", " camel", " near", " a", " tv", "."])
    assert bad == [0, 0, 0, 0, 1, 0]                 # "cam" does not match inside "camel"
    off = PenaltyRules(bad_phrases=("tv",), bad=False, repeat=False)
    assert off.penalties(["tv", " tv"]) == ([0, 0], [0, 0])
    no_year = PenaltyRules(bad_phrases=(), years=False)
    assert no_year.bad_flags(["in", " 1993"]) == [0, 0]
    assert PenaltyRules(bad_phrases=()).bad_flags(["in", " 1993", " 12345"]) == [0, 1, 0]


def test_token_spans_skip_whitespace():
    assert token_spans(["an", " image", "", " of"]) == [(0, 2), (3, 8), (8, 8), (9, 11)]


def test_decode_pieces_join_to_the_text():
    from tasks.captioning.checkpoint import build_word_tokenizer

    tok = build_word_tokenizer(["a man in a green shirt, in 1993."])
    ids = tok("a man in a green shirt, in 1993.", add_special_tokens=False).input_ids + [tok.eos_token_id]
    pieces = decode_pieces(tok, ids)
    assert "".join(pieces) == tok.decode(ids, skip_special_tokens=True)
    assert pieces[-1] == "" and pieces[1] == " man"


def test_returns_noeos_padding_and_discount():
    pen = torch.tensor([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    got = vlrm_returns(torch.tensor([2.0, 1.0]), torch.tensor([-1.0, -0.5]), torch.tensor([1.0, 0.0]), pen, mask)
    # row 0: terminal 2 - 1 - 1 = 0, penalty at token 1; row 1: terminal 0.5, penalty at token 0; padding 0
    torch.testing.assert_close(got, torch.tensor([[-1.0, -1.0, 0.0, 0.0], [-0.5, 0.5, 0.0, 0.0]]))
    disc = vlrm_returns(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([0.0]),
                        torch.tensor([[1.0, 0.0, 0.0]]), torch.ones(1, 3), gamma=0.5)
    torch.testing.assert_close(disc, torch.tensor([[0.25 - 1.0, 0.5, 1.0]]))
