"""Seeded generator of realistic mailboxes (Chinese and Latin mail) for tests and benchmarks.

Messages are real RFC 5322 bytes: RFC 2047 encoded names and subjects (UTF-8
and GB18030), quoted-printable and base64 bodies, multipart/alternative with
HTML, attachments with (encoded) filenames, Re:/Fwd: subjects, missing Date:
headers now and then. Not used by the server itself.
"""

from __future__ import annotations

import base64
import quopri
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

__all__ = ["FakeInfo", "FakeView", "Generator"]

LATIN = (
    "report quarterly budget meeting schedule project release invoice payment "
    "customer server database migration review approval contract delivery "
    "shipment update reminder agenda minutes forecast revenue expense travel "
    "conference proposal deadline security incident backup network storage "
    "résumé café naïve façade Straße Übersicht Größe équipe réunion coût "
    "année déjà été prêt über für schön Äpfel crème brûlée jalapeño señor "
    "analysis strategy quality pipeline hiring onboarding feedback roadmap"
).split()
CJK = (
    "第三季度 报告 已发送 会议 纪要 项目 进度 预算 审批 合同 客户 服务器 数据库 "
    "迁移 发布 版本 财务 报销 出差 安排 通知 请查收 附件 季度报告 年度总结 "
    "销售 数据 分析 市场 部门 人力资源 招聘 培训 安全 事件 备份 网络 存储 "
    "会議 資料 確認 お願い します 報告書 회의 자료 확인 부탁드립니다"
).split()
FIRST = "Ann Bob Chen Dora Emil Fatima Georg Hélène Ivan Jürgen Kaori Li Ming Noor Olga Pierre".split()
LAST = "Lee Smith Wang Zhang Müller Dubois Sato Kim Ivanova García Rossi Novák".split()
CN_NAMES = "张伟 王芳 李娜 刘洋 陈静 杨磊 赵敏 黄勇".split()
DOMAINS = "example.com example.org corp.example 公司.example mail.example.net".split()
KEYWORDS = ("$Forwarded", "$Junk", "$NotJunk", "Work", "Personal", "$Important")
SYSTEM_FLAGS = ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")


# --- Zipf vocabularies (deterministic): the word lists above sit at ranks 8..200 --------

_HANZI = (
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说"
    "产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从"
    "业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么"
    "利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常"
    "文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被"
    "干做必战先回则任取据处队南给色光门即保治北造百规热领七海口东导器压志世金增争济阶油思术极交受联什认六"
)
_SYLLABLES = "ka lo mi ne ru sa ti vo de pa ri mo lu ne ba co fe gi ha ja ke la ma no pe qu re se ta un ve wa xe yo ze".split()


def _vocab() -> tuple[list[str], list[float], list[str], list[float]]:
    rng = random.Random(20261126)
    lat_extra = {"".join(rng.choice(_SYLLABLES) for _ in range(rng.randrange(2, 5))) for _ in range(6000)}
    cjk_extra = {"".join(rng.choice(_HANZI) for _ in range(rng.randrange(2, 5))) for _ in range(6000)}
    lat = _place(LATIN, sorted(lat_extra - set(LATIN)), rng)
    cjk = _place(CJK, sorted(cjk_extra - set(CJK)), rng)
    return lat, _zipf(len(lat)), cjk, _zipf(len(cjk))


def _place(named: list[str], extra: list[str], rng: random.Random) -> list[str]:
    rng.shuffle(extra)
    out = extra[:8]
    rest = extra[8:]
    for i, w in enumerate(named):  # the named words at ranks 8, 12, 16, ...: common, not the commonest
        out.append(w)
        out.extend(rest[3 * i : 3 * i + 3])
    out.extend(rest[3 * len(named) :])
    return out


def _zipf(n: int, s: float = 1.0) -> list[float]:
    cum, acc = [], 0.0
    for r in range(n):
        acc += 1.0 / (r + 1) ** s
        cum.append(acc)
    return cum


def _is_cjk_word(ch: str) -> bool:
    return "\u3040" <= ch <= "\u9fff" or "\uac00" <= ch <= "\ud7af"


_LAT_VOCAB, _LAT_CUM, _CJK_VOCAB, _CJK_CUM = _vocab()


@dataclass(frozen=True, slots=True)
class FakeInfo:
    """The part of the store's MessageInfo the search engine reads."""

    uid: int
    flags: frozenset[str]
    modseq: int
    internal_date: float
    size: int


@dataclass
class FakeView:
    """The part of the store's MailboxView the search engine reads."""

    messages: list[FakeInfo] = field(default_factory=list)
    highestmodseq: int = 0


def _ew(text: str, charset: str = "utf-8", enc: str = "B") -> str:
    data = text.encode(charset)
    if enc == "B":
        return f"=?{charset}?B?{base64.b64encode(data).decode()}?="
    q = quopri.encodestring(data, header=True).decode().replace("?", "=3F").replace(" ", "_")
    return f"=?{charset}?Q?{q}?="


class Generator:
    """``Generator(seed).message(i)`` -> (raw bytes, internal date, flags)."""

    def __init__(self, seed: int = 1) -> None:
        self.seed = seed

    def words(self, rng: random.Random, n: int, cjk_share: float = 0.35) -> str:
        """``n`` words drawn from Zipf vocabularies; CJK words are written without spaces."""
        lat_n = sum(1 for _ in range(n) if rng.random() >= cjk_share)
        lat = rng.choices(_LAT_VOCAB, cum_weights=_LAT_CUM, k=lat_n)
        cjk = rng.choices(_CJK_VOCAB, cum_weights=_CJK_CUM, k=n - lat_n)
        out: list[str] = []
        li = ci = 0
        for _ in range(n):
            if ci < len(cjk) and (li >= len(lat) or rng.random() < cjk_share):
                w = cjk[ci]
                ci += 1
                if out and out[-1] and _is_cjk_word(out[-1][-1]) and rng.random() < 0.7:
                    out[-1] += w  # Chinese and Japanese text has no spaces between words
                    continue
                out.append(w)
            elif li < len(lat):
                out.append(lat[li])
                li += 1
            if rng.random() < 0.08:
                out[-1] += rng.choice([".", ",", "!", "。", "，", "\n"])
        return " ".join(out)

    def person(self, rng: random.Random) -> tuple[str, str]:
        if rng.random() < 0.3:
            name = rng.choice(CN_NAMES)
            local = f"user{rng.randrange(1000)}"
        else:
            f, last = rng.choice(FIRST), rng.choice(LAST)
            name = f"{f} {last}"
            local = f"{f}.{last}".lower().encode("ascii", "ignore").decode() or "x"
        return name, f"{local}@{rng.choice(DOMAINS[:3] + DOMAINS[4:])}"

    def address(self, rng: random.Random, name: str, addr: str) -> str:
        r = rng.random()
        if name.isascii():
            return f'"{name}" <{addr}>' if r < 0.5 else f"{name} <{addr}>"
        if r < 0.5:
            return f"{_ew(name)} <{addr}>"
        if r < 0.8:
            return f"{_ew(name, 'gb2312')} <{addr}>"
        return addr

    def message(self, i: int) -> tuple[bytes, float, frozenset[str]]:
        rng = random.Random(self.seed * 1_000_003 + i)
        when = 1_480_000_000 + rng.randrange(315_000_000)
        sent = when - rng.randrange(3600 * 30)
        subject = self.words(rng, rng.randrange(2, 8)).replace("\n", " ")
        prefix = rng.choice(["", "", "", "Re: ", "RE: ", "Fwd: ", "Re: [list] ", "回复: "])
        subject = prefix + subject
        fname, faddr = self.person(rng)
        heads = [f"From: {self.address(rng, fname, faddr)}"]
        tos = [self.person(rng) for _ in range(rng.randrange(1, 4))]
        heads.append("To: " + ", ".join(self.address(rng, n, a) for n, a in tos))
        if rng.random() < 0.3:
            heads.append("Cc: " + self.address(rng, *self.person(rng)))
        if rng.random() < 0.05:
            heads.append("Bcc: " + self.address(rng, *self.person(rng)))
        if subject.isascii() and rng.random() < 0.7:
            heads.append(f"Subject: {subject}")
        else:
            heads.append(f"Subject: {_ew(subject, rng.choice(['utf-8', 'gb18030']), rng.choice('BQ'))}")
        if rng.random() < 0.97:
            zone = timezone(timedelta(minutes=rng.choice([-480, -300, 0, 60, 330, 480, 540])))
            heads.append("Date: " + format_datetime(datetime.fromtimestamp(sent, zone)))
        heads.append(f"Message-ID: <{i}.{rng.randrange(10**9)}@{rng.choice(DOMAINS[:3])}>")
        if rng.random() < 0.2:
            heads.append(f"X-Priority: {rng.randrange(1, 6)}")
        heads.append("MIME-Version: 1.0")
        # a message is mostly Chinese/Japanese/Korean or mostly Latin-script
        body = self.words(rng, rng.randrange(20, 250), 0.85 if rng.random() < 0.4 else 0.05)
        kind = rng.random()
        if kind < 0.45:
            enc = rng.choice(["8bit", "quoted-printable", "base64"])
            heads.append("Content-Type: text/plain; charset=utf-8")
            heads.append(f"Content-Transfer-Encoding: {enc}")
            payload = _encode(body, enc)
        else:
            boundary = f"=_b{rng.randrange(10**9)}"
            parts = []
            html_body = "<html><body><p>" + body.replace("\n", "<br>").replace("&", "&amp;") + "</p></body></html>"
            if kind < 0.8:
                heads.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
                parts.append(_part("text/plain; charset=utf-8", "quoted-printable", body))
                parts.append(_part("text/html; charset=utf-8", "base64", html_body))
            else:
                heads.append(f'Content-Type: multipart/mixed; boundary="{boundary}"')
                parts.append(_part("text/html; charset=utf-8", "quoted-printable", html_body))
                name = rng.choice(["report.pdf", "预算表.xlsx", "Übersicht.docx", "photo.jpg"])
                fn = name if name.isascii() else _ew(name)
                blob = base64.encodebytes(rng.randbytes(rng.randrange(200, 3000))).decode()
                parts.append(
                    f'Content-Type: application/octet-stream; name="{fn}"\r\n'
                    f'Content-Disposition: attachment; filename="{fn}"\r\n'
                    f"Content-Transfer-Encoding: base64\r\n\r\n{blob}"
                )
            payload = "".join(f"--{boundary}\r\n{p}\r\n" for p in parts) + f"--{boundary}--\r\n"
        raw = ("\r\n".join(heads) + "\r\n\r\n" + payload).encode("utf-8")
        flags = set()
        for f in SYSTEM_FLAGS:
            if rng.random() < (0.6 if f == "\\Seen" else 0.08):
                flags.add(f)
        if rng.random() < 0.2:
            flags.add(rng.choice(KEYWORDS))
        return raw, float(when), frozenset(flags)


def _encode(text: str, enc: str) -> str:
    data = text.replace("\n", "\r\n").encode("utf-8")
    if enc == "base64":
        return base64.encodebytes(data).decode().replace("\n", "\r\n")
    if enc == "quoted-printable":
        return quopri.encodestring(data).decode().replace("\n", "\r\n")
    return data.decode("utf-8") + "\r\n"


def _part(ctype: str, enc: str, text: str) -> str:
    return f"Content-Type: {ctype}\r\nContent-Transfer-Encoding: {enc}\r\n\r\n{_encode(text, enc)}"
