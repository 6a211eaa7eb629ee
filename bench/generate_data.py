"""Write a reproducible synthetic landing zone for Brightwater Home, at any scale.

The layout is the one `python_jobs.land.ingest` reads (see docs/landing-zone.md):

    <out>/shop/customers.csv
    <out>/shop/products.jsonl
    <out>/shop/transactions/transactions_<yyyy>_<mm>.csv
    <out>/docs/<doc_type>/<doc_id>.md

Entity files carry the quirks real exports have (mixed-case emails, stray whitespace,
currency as strings, two timestamp spellings) so that staging has real cleaning to do.
Document text is drawn from a word-level Markov model trained on the hand-written sample
corpus in data/raw/docs, with headings harvested from it, so generated documents vary
in structure and wording instead of repeating one template.

`--mutate F` edits, adds and deletes a fraction F of the documents and entity rows of an
existing landing zone in place, so benchmarks can measure incremental work.

Example:
    python bench/generate_data.py --scale 100000 --out data/generated/scale-100000
    python bench/generate_data.py --out data/generated/scale-100000 --mutate 0.01 --seed 7
"""

from __future__ import annotations

import csv
import itertools
import json
import random
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent))
from catalog import Product
from catalog import products as catalog_products

from python_jobs.land.zone import SOURCES

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DOCS = REPO_ROOT / "data" / "raw" / "docs"

# Column order comes from the landing contract the ingest job enforces.
_CONTRACT = {source.table: list(source.columns) for source in SOURCES}
CUSTOMER_COLUMNS = _CONTRACT["shop_customers"]
TRANSACTION_COLUMNS = _CONTRACT["shop_transactions"]
DOC_TYPES = ("manual", "faq", "policy", "troubleshooting", "guide")
DOC_TYPE_WEIGHTS = (15, 35, 10, 30, 10)
OWNERS = ("product-docs", "customer-support", "legal", "field-service", "operations")

FIRST_NAMES = [
    "Olivia",
    "Liam",
    "Emma",
    "Noah",
    "Ava",
    "Oliver",
    "Sophia",
    "Elijah",
    "Isabella",
    "Mateo",
    "Mia",
    "Lucas",
    "Amelia",
    "Levi",
    "Harper",
    "Ezra",
    "Evelyn",
    "Asher",
    "Aaliyah",
    "James",
    "Luna",
    "Leo",
    "Camila",
    "Benjamin",
    "Priya",
    "Arjun",
    "Mei",
    "Wei",
    "Fatima",
    "Omar",
    "Chloe",
    "Diego",
    "Sofia",
    "Hiroshi",
    "Yuki",
    "Kwame",
    "Amara",
    "Tomasz",
    "Agnieszka",
    "Siobhan",
    "Connor",
    "Ingrid",
    "Lars",
    "Rosa",
    "Javier",
    "Nadia",
    "Dmitri",
    "Zoe",
    "Malik",
    "Grace",
    "Samuel",
    "Hannah",
    "Isaac",
    "Leila",
    "Ravi",
    "Anika",
    "Jamal",
    "Keisha",
    "Theo",
    "Clara",
    "Felix",
    "Hazel",
    "Jonah",
    "Ruby",
    "Silas",
    "Iris",
    "Miles",
    "Nora",
    "Owen",
    "Stella",
]
LAST_NAMES = [
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Perez",
    "Thompson",
    "White",
    "Harris",
    "Sanchez",
    "Clark",
    "Ramirez",
    "Lewis",
    "Robinson",
    "Walker",
    "Young",
    "Allen",
    "King",
    "Wright",
    "Scott",
    "Torres",
    "Nguyen",
    "Hill",
    "Flores",
    "Green",
    "Adams",
    "Nelson",
    "Baker",
    "Hall",
    "Rivera",
    "Campbell",
    "Mitchell",
    "Carter",
    "Roberts",
    "Patel",
    "Kim",
    "Chen",
    "Okafor",
    "Kowalski",
    "O'Brien",
    "Lindqvist",
    "Haddad",
    "Nakamura",
    "Mensah",
    "Ivanova",
    "Fischer",
    "Rossi",
    "Dubois",
]
CITIES = (
    ("Portland", "OR"),
    ("Seattle", "WA"),
    ("Denver", "CO"),
    ("Austin", "TX"),
    ("Chicago", "IL"),
    ("Columbus", "OH"),
    ("Atlanta", "GA"),
    ("Raleigh", "NC"),
    ("Boston", "MA"),
    ("Phoenix", "AZ"),
    ("Minneapolis", "MN"),
    ("Nashville", "TN"),
    ("Sacramento", "CA"),
    ("San Diego", "CA"),
    ("Pittsburgh", "PA"),
    ("Madison", "WI"),
    ("Boise", "ID"),
    ("Richmond", "VA"),
    ("Salt Lake City", "UT"),
    ("Tampa", "FL"),
    ("Albuquerque", "NM"),
    ("Buffalo", "NY"),
)
EMAIL_DOMAINS = ("example.com", "example.net", "example.org", "mail.example", "inbox.example")
STATUSES = (("completed", 86), ("refunded", 6), ("cancelled", 3), ("pending", 5))
CHANNELS = (("web", 48), ("store", 30), ("mobile", 18), ("phone", 4))
HISTORY_START = datetime(2025, 1, 1, tzinfo=UTC)
HISTORY_END = datetime(2026, 11, 20, tzinfo=UTC)


@dataclass(frozen=True)
class Scale:
    documents: int
    customers: int
    products: int
    transactions: int

    @classmethod
    def for_documents(cls, documents: int) -> Scale:
        """Entity counts that grow with the corpus: 10 transactions per document."""
        return cls(
            documents=documents,
            customers=max(200, documents // 2),
            products=max(100, documents // 20),
            transactions=max(5200, documents * 10),
        )


# ---------------------------------------------------------------- entity quirks


def _timestamp(rng: random.Random, ts: datetime) -> str:
    """Exports disagree on timestamp spelling; staging accepts both."""
    if rng.random() < 0.3:
        return ts.strftime("%Y-%m-%dT%H:%M:%SZ")
    return ts.strftime("%Y-%m-%d %H:%M:%S")


def _money(rng: random.Random, value: float) -> str:
    roll = rng.random()
    if roll < 0.25:
        return f"${value:,.2f}"
    if roll < 0.35:
        return f"USD {value:,.2f}"
    if roll < 0.6 and value >= 1000:
        return f"{value:,.2f}"
    return f"{value:.2f}"


def _messy(rng: random.Random, text: str) -> str:
    roll = rng.random()
    if roll < 0.08:
        return f" {text}"
    if roll < 0.16:
        return f"{text}  "
    if roll < 0.2:
        return text.upper()
    return text


def _random_moment(rng: random.Random, start: datetime, end: datetime) -> datetime:
    span = int((end - start).total_seconds())
    return start + timedelta(seconds=rng.randrange(span))


def build_products(rng: random.Random, count: int) -> list[dict]:
    """The catalog first, then colour/edition variants of it for larger scales."""
    base = catalog_products()
    rows: list[Product] = list(base[:count])
    variants = (
        "Graphite",
        "Sage",
        "Stainless",
        "Matte Black",
        "Arctic White",
        "Copper",
        "Limited Edition",
        "Refurbished",
        "Bundle",
        "Gen 2",
        "Plus",
        "Studio",
    )
    serial = 0
    while len(rows) < count:
        source = base[serial % len(base)]
        variant = variants[(serial // len(base)) % len(variants)]
        generation = serial // (len(base) * len(variants))
        sku = f"{source.sku}-V{serial:05d}"
        name = f"{source.name} ({variant}{'' if generation == 0 else f' {generation + 1}'})"
        price = round(source.list_price * rng.uniform(0.85, 1.25), 0) - 0.01
        rows.append(Product(sku, name, source.brand, source.category, source.subcategory, price))
        serial += 1
    out = []
    for product in rows:
        launched = _random_moment(rng, datetime(2021, 1, 1, tzinfo=UTC), HISTORY_START)
        updated = _random_moment(rng, HISTORY_START, HISTORY_END)
        out.append(
            {
                "sku": product.sku,
                "name": _messy(rng, product.name) if rng.random() < 0.3 else product.name,
                "brand": product.brand,
                "category": product.category if rng.random() > 0.1 else product.category.lower(),
                "subcategory": product.subcategory,
                "list_price": _money(rng, product.list_price) if rng.random() < 0.8 else product.list_price,
                "currency": "USD",
                "status": "discontinued" if rng.random() < 0.06 else "active",
                "launched_on": launched.date().isoformat(),
                "updated_at": _timestamp(rng, updated),
            }
        )
    return out


def build_customers(rng: random.Random, count: int) -> list[dict]:
    rows = []
    for n in range(1, count + 1):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        city, state = rng.choice(CITIES)
        local = rng.choice((f"{first}.{last}", f"{first[0]}{last}", f"{first}{n % 97}", f"{last}.{first}"))
        email = f"{local}@{rng.choice(EMAIL_DOMAINS)}".replace("'", "")
        if rng.random() < 0.5:
            email = email.lower()
        phone_digits = f"{rng.randrange(200, 999)}{rng.randrange(200, 999)}{rng.randrange(1000, 9999)}"
        phone = rng.choice(
            (
                f"({phone_digits[:3]}) {phone_digits[3:6]}-{phone_digits[6:]}",
                f"{phone_digits[:3]}-{phone_digits[3:6]}-{phone_digits[6:]}",
                f"+1 {phone_digits[:3]} {phone_digits[3:6]} {phone_digits[6:]}",
                phone_digits,
            )
        )
        signup = _random_moment(rng, datetime(2019, 1, 1, tzinfo=UTC), HISTORY_START)
        updated = _random_moment(rng, signup, HISTORY_END)
        rows.append(
            {
                "customer_id": f"C{n:07d}",
                "first_name": _messy(rng, first),
                "last_name": _messy(rng, last),
                "email": _messy(rng, email) if rng.random() < 0.3 else email,
                "phone": phone,
                "city": city,
                "state": state,
                "country_code": rng.choice(("US", "US", "US", "us", " US")),
                "segment": rng.choice(("consumer", "consumer", "consumer", "business", "trade")),
                "signup_date": signup.date().isoformat(),
                "updated_at": _timestamp(rng, updated),
            }
        )
    return rows


def _weighted(rng: random.Random, pairs: tuple[tuple[str, int], ...]) -> str:
    return rng.choices([p[0] for p in pairs], weights=[p[1] for p in pairs])[0]


def build_transactions(
    rng: random.Random,
    count: int,
    customers: list[dict],
    products: list[dict],
    first_id: int = 1,
    start: datetime = HISTORY_START,
    end: datetime = HISTORY_END,
) -> list[dict]:
    # A few loyal customers buy a lot, and some who signed up never buy, as in any real shop.
    customer_weights = [0.0 if rng.random() < 0.08 else rng.paretovariate(1.3) for _ in customers]
    cumulative = list(itertools.accumulate(customer_weights))  # bisect per draw, not a sum
    prices = {p["sku"]: _plain_price(p["list_price"]) for p in products}
    skus = list(prices)
    rows = []
    for n in range(first_id, first_id + count):
        customer = rng.choices(customers, cum_weights=cumulative)[0]
        sku = rng.choice(skus)
        quantity = rng.choices((1, 2, 3, 4), weights=(80, 14, 4, 2))[0]
        unit_price = prices[sku]
        discount = round(unit_price * quantity * rng.choice((0, 0, 0, 0.05, 0.1, 0.15)), 2)
        amount = round(unit_price * quantity - discount, 2)
        ordered = _random_moment(rng, start, end)
        status = _weighted(rng, STATUSES)
        updated = ordered + timedelta(days=rng.randrange(1, 40)) if status in ("refunded", "cancelled") else ordered
        rows.append(
            {
                "transaction_id": f"T{n:09d}",
                "customer_id": customer["customer_id"],
                "product_sku": sku,
                "quantity": str(quantity),
                "unit_price": _money(rng, unit_price),
                "discount": f"{discount:.2f}",
                "amount": _money(rng, amount),
                "currency": "USD" if rng.random() < 0.95 else "usd",
                "status": _messy(rng, status.capitalize() if rng.random() < 0.2 else status),
                "channel": _weighted(rng, CHANNELS),
                "ordered_at": _timestamp(rng, ordered),
                "updated_at": _timestamp(rng, min(updated, HISTORY_END)),
            }
        )
    return rows


def _plain_price(value: str | float) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    return float(re.sub(r"[^0-9.]", "", value))


def _month_key(row: dict) -> str:
    return row["ordered_at"][:7].replace("-", "_")


# ---------------------------------------------------------------- writers


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_transactions(shop: Path, rows: list[dict]) -> None:
    by_month: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_month[_month_key(row)].append(row)
    for month, month_rows in sorted(by_month.items()):
        month_rows.sort(key=lambda r: r["transaction_id"])
        write_csv(shop / "transactions" / f"transactions_{month}.csv", TRANSACTION_COLUMNS, month_rows)


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------- documents

FRONT_MATTER = re.compile(r"\A---\n.*?\n---\n", re.DOTALL)
HEADING = re.compile(r"^(#{2,4}) (.+)$", re.MULTILINE)
WORD = re.compile(r"\S+")
SENTENCE_END = re.compile(r"[.!?]$")


class TextModel:
    """Order-2 word Markov chain over the sample corpus, plus its headings by level.

    Sentences are pre-generated into a pool so that writing 100k documents costs
    sampling, not chain walking; the pool is large enough that documents rarely share
    a paragraph."""

    def __init__(self, corpus_dir: Path, rng: random.Random, pool_size: int = 40_000):
        self.rng = rng
        self.headings: dict[int, list[str]] = defaultdict(list)
        chain: dict[tuple[str, str], list[str]] = defaultdict(list)
        starts: list[tuple[str, str]] = []
        files = sorted(corpus_dir.rglob("*.md")) if corpus_dir.exists() else []
        if not files:
            raise click.ClickException(
                f"no sample documents under {corpus_dir}: the document generator learns its "
                "wording from them. Restore data/raw/docs from git, or pass --docs 0."
            )
        for path in files:
            body = FRONT_MATTER.sub("", path.read_text(encoding="utf-8"))
            for level, title in HEADING.findall(body):
                if title.lower() != "legal notice":
                    self.headings[len(level)].append(title.strip())
            for block in re.split(r"\n\s*\n", body):
                block = block.strip()
                if not block or block[0] in "#|`-*>" or block[:2].rstrip(".").isdigit():
                    continue
                words = WORD.findall(block)
                for i in range(len(words) - 2):
                    if i == 0 or SENTENCE_END.search(words[i - 1]):
                        starts.append((words[i], words[i + 1]))
                    chain[(words[i], words[i + 1])].append(words[i + 2])
        self.pool = [self._sentence(chain, starts) for _ in range(pool_size)]

    def _sentence(self, chain, starts) -> str:
        words = list(self.rng.choice(starts))
        while len(words) < 45:
            followers = chain.get((words[-2], words[-1]))
            if not followers:
                break
            words.append(self.rng.choice(followers))
            if SENTENCE_END.search(words[-1]) and len(words) >= 6:
                break
        text = " ".join(words)
        return text if SENTENCE_END.search(text) else text + "."

    def paragraph(self) -> str:
        return " ".join(self.rng.choice(self.pool) for _ in range(self.rng.randint(2, 6)))

    def heading(self, level: int) -> str:
        return self.rng.choice(self.headings.get(level) or self.headings[2])


LEGAL_FOOTER = (
    "## Legal notice\n\nThis policy is provided for general information and forms part of the "
    "Brightwater Home Terms of Sale. Brightwater Home may update this policy at any time; the "
    "version in effect on the date of your purchase applies to that purchase. Nothing in this "
    "policy limits any rights you have under applicable consumer protection law. If any part of "
    "this policy is found unenforceable, the remaining parts stay in effect.\n"
)
TITLE_PATTERNS = {
    "manual": "{name}: Owner's Manual",
    "faq": "{name}: Frequently Asked Questions",
    "policy": "{topic} Policy",
    "troubleshooting": "{name}: {heading}",
    "guide": "Guide: {heading}",
}
POLICY_TOPICS = (
    "Returns",
    "Delivery",
    "Warranty",
    "Rewards",
    "Installation",
    "Recycling",
    "Privacy",
    "Price Match",
    "Gift Card",
    "Protection Plan",
    "Recall",
    "Pickup",
)


def build_document(model: TextModel, rng: random.Random, doc_id: str, doc_type: str, products: list[dict]) -> str:
    product = rng.choice(products) if doc_type != "policy" and rng.random() < 0.8 else None
    name = product["name"].strip() if product else "Brightwater Home"
    title = TITLE_PATTERNS[doc_type].format(name=name, topic=rng.choice(POLICY_TOPICS), heading=model.heading(2))
    # Long-tailed sizes: most documents are short, a few are very long manuals.
    sections = {
        "manual": rng.randint(5, 16),
        "faq": rng.randint(2, 8),
        "policy": rng.randint(3, 8),
        "troubleshooting": rng.randint(2, 6),
        "guide": rng.randint(3, 9),
    }[doc_type]
    if rng.random() < 0.02:
        sections *= 4
    updated = _random_moment(rng, HISTORY_START, HISTORY_END)
    lines = [
        "---",
        f"doc_id: {doc_id}",
        f"title: {json.dumps(title, ensure_ascii=False)}",
        f"doc_type: {doc_type}",
    ]
    if product:
        lines.append(f"product_sku: {product['sku']}")
    lines += [
        f"owner: {rng.choice(OWNERS)}",
        f"access_level: {rng.choices(('public', 'internal', 'confidential'), weights=(85, 10, 5))[0]}",
        f"updated_at: {updated.strftime('%Y-%m-%dT%H:%M:%SZ')}",
        "---",
        f"# {title}",
        "",
        model.paragraph(),
        "",
    ]
    for _ in range(sections):
        lines += [f"## {model.heading(2)}", ""]
        for _ in range(rng.randint(1, 3)):
            lines += [model.paragraph(), ""]
        if doc_type in ("manual", "guide") and rng.random() < 0.5:
            lines += [f"### {model.heading(3)}", "", model.paragraph(), ""]
            if rng.random() < 0.3:
                lines += [
                    f"1. {rng.choice(model.pool)}",
                    f"2. {rng.choice(model.pool)}",
                    f"3. {rng.choice(model.pool)}",
                    "",
                ]
    if doc_type == "policy":
        lines.append(LEGAL_FOOTER)
    return "\n".join(lines)


def write_documents(
    docs_dir: Path, model: TextModel, rng: random.Random, count: int, products: list[dict], first: int = 1
) -> None:
    for n in range(first, first + count):
        doc_type = rng.choices(DOC_TYPES, weights=DOC_TYPE_WEIGHTS)[0]
        doc_id = f"gen-{doc_type[:3]}-{n:07d}"
        path = docs_dir / doc_type / f"{doc_id}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(build_document(model, rng, doc_id, doc_type, products), encoding="utf-8")
        if n % 10_000 == 0:
            click.echo(f"  documents: {n - first + 1:,}/{count:,}", err=True)


# ---------------------------------------------------------------- mutation


def _edit_document(path: Path, model: TextModel, rng: random.Random) -> None:
    """Change one section's paragraph, or insert a paragraph at the top, and bump updated_at."""
    text = path.read_text(encoding="utf-8")
    now = HISTORY_END.strftime("%Y-%m-%dT%H:%M:%SZ")
    text = re.sub(r"^updated_at: .*$", f"updated_at: {now}", text, count=1, flags=re.MULTILINE)
    blocks = text.split("\n\n")
    paragraphs = [i for i, b in enumerate(blocks) if b and b[0] not in "#-1|" and i > 0]
    if rng.random() < 0.3 or not paragraphs:
        title_end = text.index("\n", text.index("\n# ") + 1)
        text = text[: title_end + 1] + "\n" + model.paragraph() + "\n" + text[title_end + 1 :]
    else:
        blocks[rng.choice(paragraphs)] = model.paragraph()
        text = "\n\n".join(blocks)
    path.write_text(text, encoding="utf-8")


def mutate(out: Path, fraction: float, rng: random.Random) -> dict[str, int]:
    """Edit, add and delete `fraction` of documents and rows; returns what changed."""
    counts: dict[str, int] = defaultdict(int)
    shop = out / "shop"
    customers = read_csv(shop / "customers.csv")
    products = read_jsonl(shop / "products.jsonl")

    changed = rng.sample(range(len(customers)), k=int(len(customers) * fraction))
    for i in changed:
        customers[i]["email"] = customers[i]["email"].strip().lower()
        customers[i]["segment"] = rng.choice(("consumer", "business", "trade"))
        customers[i]["updated_at"] = _timestamp(rng, HISTORY_END)
    counts["customers_updated"] = len(changed)
    last_id = max(int(c["customer_id"][1:]) for c in customers)
    added = build_customers(rng, max(1, int(len(customers) * fraction)))
    for offset, row in enumerate(added, start=1):
        row["customer_id"] = f"C{last_id + offset:07d}"
    customers += added
    counts["customers_added"] = len(added)
    write_csv(shop / "customers.csv", CUSTOMER_COLUMNS, customers)

    # Transactions: rewrite a fraction of rows in place (refunds), delete some, add a new month.
    month_files = sorted((shop / "transactions").glob("*.csv"))
    total = 0
    last_tx = 0
    for path in month_files:
        rows = read_csv(path)
        total += len(rows)
        last_tx = max([last_tx] + [int(r["transaction_id"][1:]) for r in rows])
        if rng.random() >= fraction * 10 or not rows:
            continue  # touch only a few files, as a real late-arriving change would
        for row in rng.sample(rows, k=max(1, int(len(rows) * fraction))):
            row["status"] = "refunded"
            row["updated_at"] = _timestamp(rng, HISTORY_END)
            counts["transactions_updated"] += 1
        doomed = set(rng.sample(range(len(rows)), k=max(1, int(len(rows) * fraction / 2))))
        rows = [r for i, r in enumerate(rows) if i not in doomed]
        counts["transactions_deleted"] += len(doomed)
        write_csv(path, TRANSACTION_COLUMNS, rows)
    new_rows = build_transactions(
        rng,
        max(1, int(total * fraction)),
        customers,
        products,
        first_id=last_tx + 1,
        start=HISTORY_END - timedelta(days=5),
        end=HISTORY_END,
    )
    for row in new_rows:
        row["ordered_at"] = row["updated_at"] = HISTORY_END.strftime("%Y-%m-%d %H:%M:%S")
    write_csv(
        shop / "transactions" / f"transactions_late_{rng.randrange(10**6):06d}.csv", TRANSACTION_COLUMNS, new_rows
    )
    counts["transactions_added"] = len(new_rows)

    docs_dir = out / "docs"
    doc_paths = sorted(docs_dir.rglob("*.md"))
    if doc_paths:
        model = TextModel(SAMPLE_DOCS, rng, pool_size=5_000)
        k = max(1, int(len(doc_paths) * fraction))
        picked = rng.sample(doc_paths, k=min(len(doc_paths), 2 * k))
        for path in picked[:k]:
            _edit_document(path, model, rng)
        for path in picked[k:]:
            path.unlink()
        counts["documents_edited"] = k
        counts["documents_deleted"] = len(picked) - k
        next_n = 1 + max((int(p.stem.rsplit("-", 1)[1]) for p in doc_paths if p.stem.startswith("gen-")), default=0)
        write_documents(docs_dir, model, rng, k, products, first=next_n)
        counts["documents_added"] = k
    return dict(counts)


# ---------------------------------------------------------------- CLI


@click.command()
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path),
    required=True,
    help="Landing-zone directory to write (created if missing).",
)
@click.option(
    "--scale",
    type=int,
    default=None,
    help="Number of documents; entity counts grow with it (10 transactions per document).",
)
@click.option("--docs", "documents", type=int, default=None, help="Override the document count.")
@click.option("--customers", type=int, default=None, help="Override the customer count.")
@click.option("--products", "n_products", type=int, default=None, help="Override the product count.")
@click.option("--transactions", type=int, default=None, help="Override the transaction count.")
@click.option("--seed", type=int, default=42, show_default=True, help="Random seed: same seed, same files.")
@click.option(
    "--mutate",
    "mutate_fraction",
    type=float,
    default=None,
    help="Instead of generating, edit/add/delete this fraction of an existing landing zone.",
)
def main(
    out: Path,
    scale: int | None,
    documents: int | None,
    customers: int | None,
    n_products: int | None,
    transactions: int | None,
    seed: int,
    mutate_fraction: float | None,
) -> None:
    """Generate (or mutate) a synthetic Brightwater Home landing zone.

    Example: python bench/generate_data.py --scale 1000 --out data/generated/scale-1000
    """
    rng = random.Random(seed)
    if mutate_fraction is not None:
        if not 0 < mutate_fraction <= 1:
            raise click.BadParameter("must be in (0, 1]", param_hint="--mutate")
        if not (out / "shop" / "customers.csv").exists():
            raise click.ClickException(f"{out} is not a landing zone (no shop/customers.csv) to mutate")
        click.echo(json.dumps(mutate(out, mutate_fraction, rng), sort_keys=True))
        return
    size = Scale.for_documents(scale if scale is not None else 100)
    size = Scale(
        documents=documents if documents is not None else size.documents,
        customers=customers if customers is not None else size.customers,
        products=n_products if n_products is not None else size.products,
        transactions=transactions if transactions is not None else size.transactions,
    )
    click.echo(f"writing {size} to {out}", err=True)
    product_rows = build_products(rng, size.products)
    customer_rows = build_customers(rng, size.customers)
    write_jsonl(out / "shop" / "products.jsonl", product_rows)
    write_csv(out / "shop" / "customers.csv", CUSTOMER_COLUMNS, customer_rows)
    write_transactions(out / "shop", build_transactions(rng, size.transactions, customer_rows, product_rows))
    if size.documents:
        model = TextModel(SAMPLE_DOCS, rng)
        write_documents(out / "docs", model, rng, size.documents, product_rows)
    click.echo(json.dumps({"out": str(out), **size.__dict__}), err=False)


if __name__ == "__main__":
    main()
