"""Stop words for keyword candidates: English (scikit-learn's list) and common Chinese function words."""

from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

CHINESE_STOP_WORDS = frozenset(
    "的 了 是 在 我 有 和 就 不 人 都 一 一个 上 也 很 到 说 要 去 你 会 着 没有 看 好 自己 这 那 他 她 它 们 "
    "我们 你们 他们 这个 那个 什么 怎么 为什么 吗 呢 吧 啊 哦 嗯 还 又 把 被 给 让 从 对 与 及 或 但 而 "
    "因为 所以 如果 虽然 可以 已经 非常 比较 一些 一下 这样 那样 还是 就是 真的 东西".split()
)

ENGLISH = frozenset(ENGLISH_STOP_WORDS) | frozenset({"s", "t", "ve", "ll", "don", "didn", "doesn", "isn", "im", "ive"})
STOP_WORDS = ENGLISH | CHINESE_STOP_WORDS
