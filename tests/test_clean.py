"""Cleaning measures text written without spaces between words in characters, not as one word."""

from kdmt.data import clean_pairs

KEPT = [
    ("我昨天去了北京。", "I went to Beijing yesterday."),
    ("这是我的书。", "This is my book."),
    ("我们明天早上八点在火车站见面，好吗？", "Shall we meet at the station at eight tomorrow morning?"),
    ("私は毎朝コーヒーを飲みます。", "I drink coffee every morning."),
    ("ありがとうございます。", "Thank you."),
    ("これは2023年に買ったiPhoneです。", "This is the iPhone I bought in 2023."),
    ("ฉันไปตลาดเมื่อวานนี้", "I went to the market yesterday."),
]


def test_unspaced_scripts_are_measured_in_characters():
    src, tgt, stats = clean_pairs([s for s, _ in KEPT], [t for _, t in KEPT])
    assert list(zip(src, tgt)) == KEPT and stats.kept == len(KEPT)
    outliers = [
        ("谢谢。", "Thank you very much for all the help that you gave me at the station yesterday."),
        ("我昨天在火车站遇到了一个很久没见的老朋友，我们一起喝了咖啡。", "Yes."),
        ("Hello world", "こんにちは、今日はとても良い天気ですね。散歩に行きましょう。"),
    ]
    _, _, stats = clean_pairs([s for s, _ in outliers], [t for _, t in outliers])
    assert stats.ratio == len(outliers) and stats.kept == 0
    _, _, stats = clean_pairs(["中" * 30], ["a b c d e f g h i j"], max_words=15)
    assert stats.too_long == 1  # 30 characters are about 20 words
