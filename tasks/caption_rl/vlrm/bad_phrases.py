"""The bad-phrase list of VLRM (Dzabraev et al. 2024, Table 6).

The table prints 212 phrases in five columns, each column sorted by length (2-9, 9-12, 12-15, 15-19 and
19-29 characters), laid out row by row. The text extraction this list was read from lost the column
boundaries; they were restored from those length ranges. Phrases are kept verbatim, including the
degenerate ones the authors' model produced ("footageshows", "screenscreen", "zoomed-in picturezoomed-in")
and the ones with punctuation ("camera,", ", image", "- the cam has a").

Matching (see :func:`tasks.caption_rl.penalties.bad_phrase_flags`) is case-insensitive, on whole words.
Note for COCO: the list targets video keyframes; some entries ("a tv", "tv", "camera", "photo of",
"there is") are ordinary COCO content. The list is a config value, not a constant of the method.
"""
from __future__ import annotations

__all__ = ["VLRM_BAD_PHRASES", "TABLE1_BAD_PHRASES"]

_ROWS: tuple[tuple[str, ...], ...] = (
    ("jf", "cam grabs", "footageshows", "tv camera shows", "camera shot footage"),
    ("jpj", "instagram", "blurry scene", "camshot showing", "a zoomed in view of"),
    ("clip", "on camera", "tv film show", "capture depicts", "in webcam is shown,"),
    ("a tv", "that says", "screen photo", "televised image", "a zoomed in picture"),
    ("zoom", "grey gray", "in a web cam", "images captures", "a blurry picture of"),
    ("shot", "the tv ad", "screen image", "camera tv shows", "television ad image"),
    ("in tv", "animation", "in a podcast", "tv view showing", "television displays"),
    ("video", "there are", "channel view", "channel showing", "a zoomed-in view of"),
    ("blurry", "a film of", "camera shows", "webcam captures", "a spherical view of"),
    ("on-cam", "featuring", "screenscreen", "tv program shows", "google channel shows"),
    ("cam of", "the camera", "this tv view", "a spherical view", "camera is talking to"),
    ("in web", "tv picture", "on the right", "camera shotshows", "the television image"),
    ("in cam", "film shows", "cam captures", "a blurry picture", "camera is looking at"),
    ("tv view", "this is an", "in instagram", "a screenshare of", "middle of the screen"),
    ("twitter", "screenshot", "tv picture of", "a zoomed in view", "a zoomed in image of"),
    ("camera,", "in twitter", "film captures", "zoomed in screen", "a screen capture from"),
    ("on- cam", "game shows", "photo showing", "tv image showing", "television image of a"),
    ("webcast", "shot image", "channel shows", "cam footage show", "the camera is looking"),
    ("in zoom", "tv view of", "on the screen", "a blurry blur of", "the camera is talking"),
    ("footage", "text shows", "a close-up of", "in the middle of", "television view shows"),
    ("youtube", "tv image of", "tv film shows", "cam footageshows", "a zoomed in picture of"),
    ("camshot", "tv image is", "a webcam of a", "an image is shown", "a view from the camera"),
    (", image", "watch video", "a screen grab", "a blurry image of", "tv channel camera show"),
    ("in chat", "in facebook", "tv view shows", "tv channel camera", "computer display shows"),
    ("in msnbc", "camera show", "camera's view", "camera is looking", "television image shows"),
    ("a blurry", "cam footage", "talking about", "screen image shot", "google channel showing"),
    ("animated", "a zoomed in", "a close up of", "cam footage shows", "television view showing"),
    ("in a cam", "tv ad shows", "tv ad showing", "screenscreen view", "tv channel camera shows"),
    ("download", "a stream of", "camera tv show", "screen shot image", "the camera is talking to"),
    ("photo of", "a screen of", "tv camera shot", "camera is showing", "the camera is looking at"),
    ("close-up", "an image of", "tv image shows", "captured on video", "computer display showing"),
    ("cam show", "in animated", "spherical view", "camera is talking", "television image showing"),
    ("there is", "close up of", "on the web cam", "a zoomed in image", "game showcamera displays"),
    ("tv shows", "on the left", "screen showing", "screen is showing", "multiple images captures"),
    ("facebook", "cam showing", "camera footage", "television screen", "a camera taking a look at"),
    ("close up", "tv ad image", "webcam footage", "camera shot shows", "zoomed-in picturezoomed-in"),
    ("camera tv", "the tv view", "a blurry image", "television showing", "youtube browser displaying"),
    ("this is a", "camera shot", "camera showing", "in webcam is shown", "television image showing a"),
    ("cam shows", "movie scene", "tv film showed", "vintage film shows", "in the middle of the screen"),
    ("gray grey", "camera view", "zoomed-in view", "television view of", "the camera focuses ona zoomed"),
    ("tv showed", "screen shot", "a close-up of a", "cameras angle shot"),
    ("tv screen", "the cam has", "- the cam has a", "television image of"),
    ("a view of", "screen print", "blurry scene of", "this tv image shows"),
)

#: Table 6 of the VLRM paper (212 phrases, duplicates removed, table order).
VLRM_BAD_PHRASES: tuple[str, ...] = tuple(dict.fromkeys(p for row in _ROWS for p in row))

#: The two phrases of the worked example (Table 1).
TABLE1_BAD_PHRASES: tuple[str, ...] = ("an image of", "is talking about")
