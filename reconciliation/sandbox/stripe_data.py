"""A seeded, reproducible Stripe account history for Aipress24: customers, invoices with VAT and
discounts, payments, failures, refunds, fees, payouts and the events that announced them.

Why generated rather than recorded: the sync, the reconciliation rules and the benchmarks need the
awkward cases (a JPY customer, a reverse-charge invoice, a payment that failed twice, a payout that
carries a refund) at any size, and identical for the same seed so that a failing test can be
replayed. Every object is shaped like Stripe's own example in
`contracts/stripe/fixtures3.json` (checked by `tests/contract/test_stripe_shapes.py`), and every
amount is an integer in the currency's minor unit.

The first twelve customers are fixed personas that between them cover every scenario listed in
`docs/sandbox.md`; more customers are drawn at random from the same pools. Everything happens
between `start` and `end = start + months`, with `end` standing for "now": a balance transaction
whose funds become available after `end` is still `pending`, a payout arriving after it is
`in_transit`.
"""

from __future__ import annotations

import calendar
import copy
import itertools
import random
import string
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from reconciliation.money import minor_to_decimal

API_VERSION = "2026-10-28.endive"
DEFAULT_SEED = 7
DEFAULT_CUSTOMERS = 40
DEFAULT_MONTHS = 12
# Fixed so that the same seed gives the same data on any day; twelve months from it end in the past.
DEFAULT_START = datetime(2025, 11, 1, tzinfo=UTC)

ACCOUNT_ID = "acct_1Ap24SyncSandbx"
ACCOUNT_NAME = "Aipress24"
STATEMENT_DESCRIPTOR = "AIPRESS24"

# Resources the sandbox serves, in the order they are listed in reports.
RESOURCES = (
    "customers",
    "tax_ids",
    "tax_rates",
    "coupons",
    "discounts",
    "invoices",
    "invoice_payments",
    "payment_intents",
    "charges",
    "refunds",
    "balance_transactions",
    "payouts",
    "events",
)

DAY = 86_400
_ALPHABET = string.ascii_letters + string.digits
EU_COUNTRIES = ("AT", "BE", "DE", "ES", "FR", "IT", "LU", "NL", "PT")


# --- catalogue ------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaxRateSpec:
    """A French VAT rate. `basis_points` (hundredths of a percent) is what amounts are computed
    with; `percentage` is only the number Stripe displays."""

    key: str
    basis_points: int
    percentage: float
    description: str
    taxability_reason: str


TAX_RATES = (
    TaxRateSpec("standard", 2000, 20.0, "TVA 20 % (services)", "standard_rated"),
    TaxRateSpec("reduced", 550, 5.5, "TVA 5,5 % (livres, billetterie)", "reduced_rated"),
    TaxRateSpec("press", 210, 2.1, "TVA 2,1 % (presse)", "reduced_rated"),
    TaxRateSpec(
        "reverse_charge",
        0,
        0.0,
        "Autoliquidation (article 196, directive 2006/112/CE)",
        "reverse_charge",
    ),
)
_RATE_BY_CATEGORY = {"service": "standard", "book": "reduced", "event": "reduced", "press": "press"}


@dataclass(frozen=True)
class Product:
    label: str
    category: str  # service, press, book, event
    prices: dict[str, int]  # currency -> unit amount excluding VAT, minor units
    interval: str | None = None  # month, year: a subscription price


PRODUCTS = {
    "bw_media_monthly": Product(
        "Business Wall Médias — abonnement mensuel",
        "service",
        {"eur": 4900, "gbp": 4200, "usd": 5500, "jpy": 7500},
        "month",
    ),
    "bw_media_annual": Product(
        "Business Wall Médias — abonnement annuel",
        "service",
        {"eur": 49000, "gbp": 42000, "usd": 55000, "jpy": 75000},
        "year",
    ),
    "bw_experts_monthly": Product(
        "Business Wall Leaders & Experts — abonnement mensuel", "service", {"eur": 2900}, "month"
    ),
    "bw_experts_annual": Product(
        "Business Wall Leaders & Experts — abonnement annuel", "service", {"eur": 29000}, "year"
    ),
    "bw_pr_monthly": Product(
        "Business Wall PR — par client représenté, mensuel", "service", {"eur": 1900}, "month"
    ),
    "article": Product("Article", "press", {"eur": 490, "gbp": 450, "usd": 550, "jpy": 800}),
    "press_kit": Product("Dossier de presse numérique", "press", {"eur": 990}),
    "book_guide": Product("Livre : Guide pratique de l'attaché·e de presse", "book", {"eur": 2400}),
    "book_directory": Product(
        "Livre : Annuaire de la presse régionale 2026", "book", {"eur": 3900}
    ),
    "event_ticket": Product(
        "Billet : Rencontres de la presse indépendante (Lyon)", "event", {"eur": 4500}
    ),
    "release_diffusion": Product("Diffusion d'un communiqué de presse", "service", {"eur": 15000}),
    "homepage_feature": Product(
        "Mise en avant en page d'accueil (7 jours)", "service", {"eur": 8000, "usd": 9000}
    ),
}

ARTICLE_TITLES = (
    "L'économie du papier en 2026",
    "Côte d'Azur : la presse locale résiste",
    "Enquête : les coulisses d'un quotidien régional",
    "Les « fact-checkers » face à l'IA générative",
    "Über die Zukunft des Lokaljournalismus",
    "Quand l'hebdo d'Évreux fête ses 150 ans",
    "Médias : l'année où tout a changé",
    "Pêche : les ports bretons s'inquiètent",
    "La crise du logement à Besançon, chiffres à l'appui",
    "Entretien : « Nous n'avons jamais autant lu »",
)


@dataclass(frozen=True)
class CouponSpec:
    code: str
    name: str
    duration: str
    percent_basis_points: int | None = None  # 1500 = 15 %
    amount_off: int | None = None
    currency: str | None = None


COUPONS = (
    CouponSpec("BIENVENUE20", "Bienvenue -20 %", "once", percent_basis_points=2000),
    CouponSpec("PRESSE-ASSO-15", "Presse associative -15 %", "forever", percent_basis_points=1500),
    CouponSpec(
        "INVITATION-PRESSE", "Invitation presse (100 %)", "once", percent_basis_points=10000
    ),
    CouponSpec("GESTE-10EUR", "Geste commercial 10 €", "once", amount_off=1000, currency="eur"),
)

# Stripe's French pricing for standard cards: a percentage (basis points) by card region plus a
# fixed part in the settlement currency. Settlement is per currency (multi-currency settlement),
# so no conversion fee and no exchange rate.
FEE_BASIS_POINTS = {"eea": 150, "uk": 250, "international": 325}
FEE_FIXED = {"eur": 25, "gbp": 20, "usd": 30, "jpy": 40}
AVAILABLE_AFTER_DAYS = 7
PAYOUT_ARRIVAL_DAYS = 2


# --- customers ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Place:
    country: str
    city: str
    postal_code: str
    street: str
    state: str | None = None


PLACES = {
    "FR": (
        Place("FR", "Paris", "75011", "rue de la Roquette"),
        Place("FR", "Lyon", "69002", "quai Saint-Antoine"),
        Place("FR", "Marseille", "13001", "La Canebière"),
        Place("FR", "Bordeaux", "33000", "cours de l'Intendance"),
        Place("FR", "Lille", "59000", "rue Esquermoise"),
        Place("FR", "Rennes", "35000", "quai Lamartine"),
        Place("FR", "Strasbourg", "67000", "place de l'Homme-de-Fer"),
        Place("FR", "Besançon", "25000", "Grande Rue"),
        Place("FR", "Aix-en-Provence", "13100", "cours Mirabeau"),
        Place("FR", "Évreux", "27000", "rue de l'Horloge"),
    ),
    "DE": (
        Place("DE", "Berlin", "10115", "Invalidenstraße"),
        Place("DE", "München", "80331", "Marienplatz"),
        Place("DE", "Köln", "50667", "Hohe Straße"),
        Place("DE", "Düsseldorf", "40213", "Königsallee"),
    ),
    "BE": (
        Place("BE", "Bruxelles", "1000", "Rue Neuve"),
        Place("BE", "Liège", "4000", "Place Saint-Lambert"),
        Place("BE", "Gent", "9000", "Korenmarkt"),
    ),
    "IT": (
        Place("IT", "Roma", "00184", "Via Nazionale"),
        Place("IT", "Milano", "20121", "Corso di Porta Nuova"),
        Place("IT", "Napoli", "80134", "Via Toledo"),
    ),
    "ES": (
        Place("ES", "Madrid", "28013", "Calle Mayor"),
        Place("ES", "Barcelona", "08002", "Carrer de Ferran"),
        Place("ES", "Sevilla", "41004", "Calle Sierpes"),
    ),
    "GB": (Place("GB", "London", "EC2A 4NE", "Great Eastern Street"),),
    "US": (Place("US", "New York", "10013", "Hudson Street", "NY"),),
    "JP": (Place("JP", "Tokyo", "100-0005", "Marunouchi, Chiyoda-ku", "Tokyo"),),
}
CURRENCY_BY_COUNTRY = {"GB": "gbp", "US": "usd", "JP": "jpy"}
LOCALE_BY_COUNTRY = {
    "FR": "fr-FR", "DE": "de-DE", "BE": "fr-BE", "IT": "it-IT", "ES": "es-ES",
    "GB": "en-GB", "US": "en-US", "JP": "ja-JP",
}  # fmt: skip
PHONE_PREFIX = {
    "FR": "+33 1", "DE": "+49 30", "BE": "+32 4", "IT": "+39 06", "ES": "+34 91",
    "GB": "+44 20", "US": "+1 212", "JP": "+81 3",
}  # fmt: skip

FIRST_NAMES = {
    "FR": ("Amélie", "François", "Hélène", "Benoît", "Cécile", "Jérôme", "Maëlle", "Noël",
           "Océane", "Raphaël", "Loïc", "Gaëlle", "Anaïs", "Stéphane", "Marie-Ève", "Jean-Luc"),
    "DE": ("Jürgen", "Zoë", "Björn", "Käthe", "Günther", "Lena", "Sören"),
    "BE": ("Anaïs", "Maxime", "Céline", "Wouter", "Jef"),
    "IT": ("Giulia", "Niccolò", "Lucia", "Matteo", "Chiara"),
    "ES": ("José", "María Pilar", "Begoña", "Íñigo", "Mónica"),
    "GB": ("Siobhan", "Ciarán", "Eleanor"),
    "US": ("Dana", "Marcus", "Renée"),
}  # fmt: skip
LAST_NAMES = {
    "FR": ("Lefèvre", "Dubois", "Girard", "Mercier", "D'Almeida", "Béranger", "Le Guénnec",
           "Faure", "Roussel", "Lemaître", "N'Diaye", "Côté", "Delacroix", "L'Hôte"),
    "DE": ("Müller", "Weiß", "Schäfer", "Köhler", "Groß", "Jäger"),
    "BE": ("Vandenbroucke", "Dupont", "Peeters", "Janssens", "De Smet"),
    "IT": ("D'Angelo", "Esposito", "Ricci", "Bianchi", "De Luca"),
    "ES": ("Núñez", "Ibáñez", "Gómez", "Fernández", "Peña"),
    "GB": ("O'Connor", "Whitfield", "Ó Briain"),
    "US": ("O'Neil", "Castillo", "Whitaker"),
}  # fmt: skip
ORG_PATTERNS = {
    "FR": ("L'Écho de {place}", "Éditions du {word}", "{place} Presse & Médias",
           "Agence {last} Relations Presse", "Le Journal d'{place}", "Radio Fréquence {place}"),
    "DE": ("{last} Medien GmbH", "Verlag {last} & Söhne KG"),
    "BE": ("Éditions {last} SRL", "Média {place} ASBL"),
    "IT": ("Edizioni {last} S.r.l.",),
    "ES": ("Ediciones {last} S.L.",),
    "GB": ("{last} Media Ltd",),
    "US": ("{last} Review LLC",),
}  # fmt: skip
FR_WORDS = ("Quai", "Cœur", "Littoral", "Bocage", "Causse", "Pays d'Oc", "Val-d'Oise")


@dataclass(frozen=True)
class Persona:
    """Who a customer is and what they do over the period."""

    name: str
    individual: bool
    place: Place
    street_number: int
    plan: str | None = None  # a subscription product key
    quantity: int = 1
    articles: int = 0  # article purchases paid without an invoice
    purchases: tuple[tuple[tuple[str, int], ...], ...] = ()  # one-off invoices: (product, qty)
    scenarios: tuple[str, ...] = ()
    has_vat_number: bool = False
    stripe_only: bool = False  # created in Stripe, unknown to Aipress24

    @property
    def currency(self) -> str:
        return CURRENCY_BY_COUNTRY.get(self.place.country, "eur")

    @property
    def tax_mode(self) -> str:
        """French VAT for France and EU consumers (Aipress24 stays under the EU distance-selling
        threshold), reverse charge for EU businesses with a VAT number, none outside the EU."""
        country = self.place.country
        if country not in EU_COUNTRIES:
            return "none"
        if country != "FR" and self.has_vat_number and not self.individual:
            return "reverse_charge"
        return "fr_vat"


def _anchor_personas() -> list[Persona]:
    """Twelve fixed customers: together they cover every scenario the sync must handle."""
    fr, de, be, it, es = (PLACES[c] for c in ("FR", "DE", "BE", "IT", "ES"))
    return [
        Persona(
            "Éditions L'Harmattan", False, fr[0], 5, plan="bw_media_monthly",
            purchases=((("article", 1), ("book_guide", 1), ("event_ticket", 2),
                        ("release_diffusion", 1)),),
            scenarios=("welcome_coupon", "mixed_vat"), has_vat_number=True,
        ),
        Persona("Zoë Müller", True, de[0], 12, articles=3, scenarios=("full_refund",)),
        Persona(
            "Agence Presse Côte d'Azur", False,
            Place("FR", "Nice", "06000", "promenade des Anglais"), 3, plan="bw_media_annual",
            scenarios=("association_discount", "partial_refund"), has_vat_number=True,
        ),
        Persona(
            "Brightwater Media Ltd", False, PLACES["GB"][0], 12, plan="bw_media_monthly",
            has_vat_number=True,
        ),
        Persona(
            "Kōji Tanaka", True, PLACES["JP"][0], 1, articles=2,
            purchases=((("article", 3),),),
        ),
        Persona(
            "Müller & Söhne Verlag GmbH", False, de[1], 8, plan="bw_media_annual",
            has_vat_number=True,
        ),
        Persona(
            "Librairie Saint-Étienne", False, Place("FR", "Saint-Étienne", "42000", "rue Gambetta"),
            21, purchases=((("book_directory", 2),), (("book_guide", 3), ("event_ticket", 1))),
            scenarios=("failed_open",), has_vat_number=True,
        ),
        Persona(
            "Giulia D'Angelo", True, it[0], 172, plan="bw_experts_monthly",
            purchases=((("homepage_feature", 1),),), scenarios=("failed_then_paid", "void"),
        ),
        Persona(
            "José Núñez Ibáñez", True, es[0], 12, articles=2,
            purchases=((("press_kit", 1),),), scenarios=("zero_total",),
        ),
        Persona(
            "Hudson Valley Review LLC", False, PLACES["US"][0], 121, plan="bw_media_monthly",
            articles=1,
        ),
        Persona(
            "Maison de la Presse de Liège SRL", False, be[1], 12, plan="bw_pr_monthly",
            quantity=3, has_vat_number=True,
        ),
        Persona(
            "Amélie Lefèvre-Dubois", True, fr[1], 8, articles=2,
            purchases=((("article", 2), ("press_kit", 1)),), stripe_only=True,
        ),
    ]  # fmt: skip


# --- helpers --------------------------------------------------------------------------------
def add_months(moment: datetime, months: int) -> datetime:
    """The same day and time `months` later, clamped to the month's last day (Jan 31 → Feb 28)."""
    month_index = moment.month - 1 + months
    year, month = moment.year + month_index // 12, month_index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def _ts(moment: datetime) -> int:
    return int(moment.timestamp())


def _midnight(ts: int) -> int:
    return ts - ts % DAY


def percent_of(amount: int, basis_points: int) -> int:
    """`amount * basis_points / 10 000` rounded half up, in integers (amounts are never negative
    here)."""
    return (amount * basis_points + 5_000) // 10_000


def allocate(total: int, weights: list[int]) -> list[int]:
    """Split `total` in proportion to `weights`, largest remainders first, so that the parts add
    up exactly (a discount shared between lines at different VAT rates)."""
    weight_sum = sum(weights)
    if weight_sum == 0:
        return [0 for _ in weights]
    shares = [total * weight // weight_sum for weight in weights]
    remainders = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % weight_sum), i))
    for i in remainders[: total - sum(shares)]:
        shares[i] += 1
    return shares


def stripe_fee(amount: int, currency: str, card_region: str) -> int:
    """Stripe's processing fee on a card charge, in the charge's minor units."""
    return percent_of(amount, FEE_BASIS_POINTS[card_region]) + FEE_FIXED[currency]


def money_label(amount: int, currency: str) -> str:
    symbol = {"eur": "€", "gbp": "£", "usd": "$", "jpy": "¥"}[currency]
    return f"{symbol}{minor_to_decimal(amount, currency):,}"


def _ascii_slug(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    letters = "".join(c for c in decomposed if not unicodedata.combining(c))
    words = "".join(c.lower() if c.isalnum() else " " for c in letters).split()
    return ".".join(words[:3]) or "client"


def _luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


class _Ids:
    """Stripe-looking ids (`in_1Q…`, `cus_…`), drawn from the dataset's seeded random stream."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._seen: set[str] = set()

    def new(self, prefix: str, length: int = 24, lead: str = "1") -> str:
        while True:
            body = lead + "".join(self._rng.choice(_ALPHABET) for _ in range(length - len(lead)))
            identifier = f"{prefix}_{body}"
            if identifier not in self._seen:
                self._seen.add(identifier)
                return identifier

    def token(self, length: int) -> str:
        return "".join(self._rng.choice(_ALPHABET) for _ in range(length))

    def reserve(self, identifiers: Iterable[str]) -> None:
        """Ids that exist already (another dataset's, or given by Aipress24): never drawn."""
        self._seen.update(identifiers)


# --- the dataset ----------------------------------------------------------------------------
@dataclass
class StripeDataset:
    """What `generate` returns: every object by resource, oldest first, plus the account balance
    and which balance transactions each payout paid out."""

    seed: int
    start: datetime
    end: datetime
    collections: dict[str, list[dict[str, Any]]]
    balance: dict[str, Any]
    payout_transactions: dict[str, list[str]]  # po_… -> txn_… (its own payout txn included)
    order: dict[str, tuple[int, int]] = field(repr=False)  # id -> (created, sequence)
    index: dict[str, dict[str, Any]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.index = {}
        for objects in self.collections.values():
            for obj in objects:
                self.index[obj["id"]] = obj

    def get(self, object_id: str) -> dict[str, Any] | None:
        return self.index.get(object_id)

    def counts(self) -> dict[str, int]:
        return {name: len(objects) for name, objects in self.collections.items()}


class _Story:
    """Builds the account's history in time order per customer, keeping an event (with a snapshot
    of the object as it was then) for every change a webhook would have announced."""

    def __init__(
        self, *, seed: int, start: datetime, end: datetime, first_sequence: int = 0
    ) -> None:
        """`first_sequence`: where the tie-breaking sequence of `order` starts, so that a story
        told beside another dataset (whose `order` it adopts) never reuses its numbers."""
        self.rng = random.Random(seed)
        self.ids = _Ids(self.rng)
        self.start, self.end = _ts(start), _ts(end)
        self.collections: dict[str, list[dict[str, Any]]] = {name: [] for name in RESOURCES}
        self.order: dict[str, tuple[int, int]] = {}
        self._sequence = itertools.count(first_sequence)
        self.tax_rates: dict[str, dict[str, Any]] = {}
        self.coupons: dict[str, dict[str, Any]] = {}
        self.bank_accounts: dict[str, str] = {}
        self.charge_region: dict[str, str] = {}
        self.invoice_seq: dict[str, int] = {}
        self.cards: dict[str, dict[str, Any]] = {}
        self.customer_by_id: dict[str, dict[str, Any]] = {}

    # -- bookkeeping -----------------------------------------------------------------------
    def add(self, resource: str, obj: dict[str, Any], created: int | None = None) -> dict:
        self.collections[resource].append(obj)
        self.order[obj["id"]] = (
            obj["created"] if created is None else created,
            next(self._sequence),
        )
        return obj

    def emit(self, event_type: str, obj: dict[str, Any], at: int, *, by_api: bool = False) -> None:
        request = {"id": None, "idempotency_key": None}
        if by_api:
            request = {"id": f"req_{self.ids.token(14)}", "idempotency_key": self._uuid()}
        event = {
            "api_version": API_VERSION,
            "created": at,
            "data": {"object": copy.deepcopy(obj)},
            "id": self.ids.new("evt"),
            "livemode": False,
            "object": "event",
            "pending_webhooks": 0,
            "request": request,
            "type": event_type,
        }
        self.add("events", event)

    def _uuid(self) -> str:
        hexdigits = "".join(self.rng.choice("0123456789abcdef") for _ in range(32))
        return "-".join(
            (hexdigits[:8], hexdigits[8:12], hexdigits[12:16], hexdigits[16:20], hexdigits[20:])
        )

    def within(self, at: int) -> bool:
        return self.start <= at < self.end

    def refund_paid_invoices(self, share: float) -> None:
        """Refund more paid invoices, chosen at random, until `share` of them carry a refund
        (a benchmark's "10 % refunded"): every other one in full, the others by a third, two
        days after the payment."""
        invoice_status = {
            invoice["id"]: invoice["status"] for invoice in self.collections["invoices"]
        }
        intents = {
            item["payment"]["payment_intent"]
            for item in self.collections["invoice_payments"]
            if item["status"] == "paid" and invoice_status.get(item["invoice"]) == "paid"
        }
        paid = [
            charge
            for charge in self.collections["charges"]
            if charge["status"] == "succeeded" and charge.get("payment_intent") in intents
        ]
        wanted = round(share * len(paid)) - sum(1 for c in paid if c["amount_refunded"])
        candidates = [
            charge
            for charge in paid
            if not charge["amount_refunded"] and self.within(charge["created"] + 2 * DAY)
        ]
        chosen = self.rng.sample(candidates, k=max(0, min(wanted, len(candidates))))
        for number, charge in enumerate(sorted(chosen, key=lambda c: self.order[c["id"]])):
            amount = charge["amount"] if number % 2 == 0 else charge["amount"] // 3
            self.refund(charge, amount, charge["created"] + 2 * DAY, "requested_by_customer")

    # -- account set-up --------------------------------------------------------------------
    def set_up_account(self) -> None:
        created = self.start - 30 * DAY
        for spec in TAX_RATES:
            rate = {
                "active": True,
                "country": "FR",
                "created": created,
                "description": spec.description,
                "display_name": "TVA" if spec.basis_points else "Autoliquidation",
                "effective_percentage": spec.percentage,
                "id": self.ids.new("txr"),
                "inclusive": False,
                "jurisdiction": "FR",
                "jurisdiction_level": "country",
                "livemode": False,
                "metadata": {"ap24_rate": spec.key},
                "object": "tax_rate",
                "percentage": spec.percentage,
                "state": None,
                "tax_type": "vat",
                "flat_amount": None,
                "rate_type": "percentage",
            }
            self.tax_rates[spec.key] = self.add("tax_rates", rate)
        for spec in COUPONS:
            coupon = {
                "amount_off": spec.amount_off,
                "created": created,
                "currency": spec.currency,
                "duration": spec.duration,
                "duration_in_months": None,
                "id": spec.code,
                "max_redemptions": None,
                "livemode": False,
                "metadata": {},
                "name": spec.name,
                "object": "coupon",
                "percent_off": (
                    None if spec.percent_basis_points is None else spec.percent_basis_points / 100
                ),
                "redeem_by": None,
                "times_redeemed": 0,
                "valid": True,
            }
            self.coupons[spec.code] = self.add("coupons", coupon)

    # -- customers -------------------------------------------------------------------------
    def random_persona(self) -> Persona:
        rng = self.rng
        country = rng.choices(
            ("FR", "BE", "DE", "IT", "ES", "GB", "US"), weights=(60, 10, 8, 8, 8, 3, 3)
        )[0]
        place = rng.choice(PLACES[country])
        individual = rng.random() < 0.5
        first, last = rng.choice(FIRST_NAMES[country]), rng.choice(LAST_NAMES[country])
        if individual:
            name = f"{first} {last}"
        else:
            name = rng.choice(ORG_PATTERNS[country]).format(
                place=place.city, last=last, word=rng.choice(FR_WORDS)
            )
        currency = CURRENCY_BY_COUNTRY.get(country, "eur")
        plan = rng.choices(
            (None, "bw_media_monthly", "bw_media_annual", "bw_experts_monthly",
             "bw_experts_annual", "bw_pr_monthly"),
            weights=(45, 20, 10, 10, 5, 10),
        )[0]  # fmt: skip
        if plan and currency not in PRODUCTS[plan].prices:
            plan = "bw_media_monthly"
        purchases = []
        for _ in range(rng.choice((0, 0, 1, 1, 2))):
            choices = [
                key for key, p in PRODUCTS.items() if not p.interval and currency in p.prices
            ]
            keys = rng.sample(choices, k=min(len(choices), rng.choice((1, 1, 2, 3))))
            purchases.append(tuple((key, rng.choice((1, 1, 1, 2))) for key in keys))
        scenarios = []
        if rng.random() < 0.12:
            scenarios.append("partial_refund")
        if rng.random() < 0.12:
            scenarios.append("full_refund")
        if plan and PRODUCTS[plan].interval == "month" and rng.random() < 0.15:
            scenarios.append("failed_then_paid")
        if plan and rng.random() < 0.2:
            scenarios.append("welcome_coupon")
        has_vat = not individual and country in (*EU_COUNTRIES, "GB") and rng.random() < 0.7
        return Persona(
            name=name,
            individual=individual,
            place=place,
            street_number=rng.randint(1, 120),
            plan=plan,
            quantity=rng.randint(2, 6) if plan == "bw_pr_monthly" else 1,
            articles=rng.choice((0, 1, 2, 3, 4)),
            purchases=tuple(purchases),
            scenarios=tuple(scenarios),
            has_vat_number=has_vat,
            stripe_only=rng.random() < 0.1,
        )

    def vat_number(self, country: str) -> str:
        """A plausible VAT number; French ones carry a valid SIREN (Luhn) and key."""
        if country == "FR":
            while True:
                siren = f"{self.rng.randint(300_000_000, 999_999_999)}"
                if _luhn_valid(siren):
                    break
            key = (12 + 3 * (int(siren) % 97)) % 97
            return f"FR{key:02d}{siren}"
        digits = {"DE": 9, "BE": 9, "IT": 11, "GB": 9}.get(country, 8)
        body = "".join(self.rng.choice(string.digits) for _ in range(digits))
        if country == "BE":
            return f"BE0{body}"
        if country == "ES":
            return f"ESB{body}"
        return f"{country}{body}"

    def snowflake(self, at: int) -> str:
        """An Aipress24 id: milliseconds since 1970 shifted left by 22 bits, plus noise."""
        return str((at * 1000) << 22 | self.rng.getrandbits(22))

    def create_customer(self, persona: Persona, created: int, number: int) -> dict[str, Any]:
        place = persona.place
        address = {
            "city": place.city,
            "country": place.country,
            "line1": f"{persona.street_number} {place.street}"
            if place.country in ("FR", "BE", "GB", "US")
            else f"{place.street} {persona.street_number}",
            "line2": None,
            "postal_code": place.postal_code,
            "state": place.state,
        }
        customer_id = self.ids.new("cus", 14, lead="")
        pm_id = self.ids.new("pm")
        domain = ("example.com", "example.org", "example.net")[number % 3]
        metadata: dict[str, str] = {}
        if not persona.stripe_only:
            if persona.individual:
                metadata["ap24_user_id"] = str(1000 + number)
            else:
                metadata["ap24_org_id"] = self.snowflake(created)
        customer = {
            "address": address,
            "balance": 0,
            "created": created,
            "currency": persona.currency,
            "default_source": None,
            "delinquent": False,
            "description": None if persona.individual else "Organisation cliente Aipress24",
            "discount": None,
            "email": f"{_ascii_slug(persona.name)}.{number}@{domain}",
            "id": customer_id,
            "invoice_prefix": self.ids.token(8).upper(),
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": pm_id,
                "footer": None,
                "rendering_options": {"amount_tax_display": None, "template": None},
            },
            "livemode": False,
            "metadata": metadata,
            "name": persona.name,
            "next_invoice_sequence": 1,
            "object": "customer",
            "phone": self._phone(place.country),
            "preferred_locales": [LOCALE_BY_COUNTRY[place.country]],
            "shipping": None,
            "tax_exempt": {"fr_vat": "none", "reverse_charge": "reverse", "none": "exempt"}[
                persona.tax_mode
            ],
            "test_clock": None,
        }
        self.add("customers", customer)
        self.invoice_seq[customer_id] = 0
        self.charge_region[customer_id] = (
            "eea"
            if place.country in EU_COUNTRIES
            else "uk"
            if place.country == "GB"
            else "international"
        )
        self.cards[customer_id] = self._card_for(pm_id, place.country)
        if persona.has_vat_number:
            self._add_tax_id(customer, persona, created)
        if "association_discount" in persona.scenarios:
            customer["discount"] = self.discount("PRESSE-ASSO-15", customer_id, created + 60)
        self.emit("customer.created", customer, created, by_api=True)
        return customer

    def _phone(self, country: str) -> str:
        groups = " ".join(f"{self.rng.randint(10, 99)}" for _ in range(4))
        return f"{PHONE_PREFIX[country]} {groups}"

    def _card_for(self, pm_id: str, country: str) -> dict[str, Any]:
        brand = self.rng.choice(("visa", "visa", "mastercard"))
        return {
            "payment_method": pm_id,
            "brand": brand,
            "country": country,
            "exp_month": self.rng.randint(1, 12),
            "exp_year": self.rng.randint(2027, 2031),
            "fingerprint": self.ids.token(16),
            "funding": self.rng.choice(("credit", "debit")),
            "last4": f"{self.rng.randint(0, 9999):04d}",
        }

    def _add_tax_id(self, customer: dict[str, Any], persona: Persona, created: int) -> None:
        country = persona.place.country
        tax_id = {
            "country": country,
            "created": created,
            "customer": customer["id"],
            "id": self.ids.new("txi"),
            "livemode": False,
            "object": "tax_id",
            "owner": {"customer": customer["id"], "type": "customer", "customer_account": None},
            "type": "gb_vat" if country == "GB" else "eu_vat",
            "value": self.vat_number(country),
            "verification": {"status": "verified", "verified_address": None, "verified_name": None},
            "customer_account": None,
        }
        self.add("tax_ids", tax_id)

    def customer_tax_ids(self, customer_id: str) -> list[dict[str, str]]:
        return [
            {"type": t["type"], "value": t["value"]}
            for t in self.collections["tax_ids"]
            if t["customer"] == customer_id
        ]

    def discount(
        self,
        code: str,
        customer_id: str,
        at: int,
        *,
        invoice: str | None = None,
        subscription: str | None = None,
    ) -> dict[str, Any]:
        self.coupons[code]["times_redeemed"] += 1
        discount = {
            "checkout_session": None,
            "customer": customer_id,
            "end": None,
            "id": self.ids.new("di"),
            "invoice": invoice,
            "invoice_item": None,
            "object": "discount",
            "promotion_code": None,
            "start": at,
            "subscription": subscription,
            "subscription_item": None,
            "source": {"coupon": code, "type": "coupon"},
            "customer_account": None,
        }
        return self.add("discounts", discount, created=at)

    # -- invoices --------------------------------------------------------------------------
    def _line(
        self,
        *,
        invoice_id: str,
        currency: str,
        product_key: str,
        quantity: int,
        period: tuple[int, int],
        subscription: tuple[str, str] | None,
        title: str | None = None,
    ) -> dict[str, Any]:
        product = PRODUCTS[product_key]
        unit = product.prices[currency]
        if subscription:
            description = (
                f"{quantity} × {product.label} "  # noqa: RUF001 - Stripe's own wording
                f"(at {money_label(unit, currency)} / {product.interval})"
            )
            parent = {
                "invoice_item_details": None,
                "subscription_item_details": {
                    "invoice_item": None,
                    "proration": False,
                    "proration_details": {"credited_items": None},
                    "subscription": subscription[0],
                    "subscription_item": subscription[1],
                },
                "type": "subscription_item_details",
            }
        else:
            description = f"{product.label} : « {title} »" if title else product.label
            parent = {
                "invoice_item_details": {
                    "invoice_item": self.ids.new("ii"),
                    "proration": False,
                    "proration_details": {"credited_items": None},
                    "subscription": None,
                },
                "subscription_item_details": None,
                "type": "invoice_item_details",
            }
        amount = unit * quantity
        return {
            "amount": amount,
            "currency": currency,
            "description": description,
            "discount_amounts": [],
            "discountable": True,
            "discounts": [],
            "id": self.ids.new("il"),
            "invoice": invoice_id,
            "livemode": False,
            "metadata": {},
            "object": "line_item",
            "period": {"end": period[1], "start": period[0]},
            "quantity": quantity,
            "subscription": subscription[0] if subscription else None,
            "pretax_credit_amounts": [],
            "taxes": [],
            "parent": parent,
            "pricing": {"type": "price_details", "unit_amount_decimal": str(unit)},
            "subtotal": amount,
            "quantity_decimal": None,
            "_tax_key": _RATE_BY_CATEGORY[product.category],  # popped once taxes are computed
        }

    def _apply_discounts_and_taxes(
        self, lines: list[dict[str, Any]], discounts: list[dict[str, Any]], tax_mode: str
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Share each discount over the lines, then tax each line on what is left. Returns the
        invoice's total_discount_amounts and total_taxes."""
        remaining = [line["amount"] for line in lines]
        total_discounts = []
        for discount in discounts:
            coupon = self.coupons[discount["source"]["coupon"]]
            base = sum(remaining)
            if coupon["amount_off"] is not None:
                amount = min(coupon["amount_off"], base)
            else:
                spec = next(c for c in COUPONS if c.code == coupon["id"])
                amount = percent_of(base, spec.percent_basis_points or 0)
            shares = allocate(amount, remaining)
            for line, share in zip(lines, shares, strict=True):
                line["discount_amounts"].append({"amount": share, "discount": discount["id"]})
                line["pretax_credit_amounts"].append(
                    {
                        "amount": share,
                        "credit_balance_transaction": None,
                        "discount": discount["id"],
                        "type": "discount",
                    }
                )
            remaining = [r - s for r, s in zip(remaining, shares, strict=True)]
            total_discounts.append({"amount": amount, "discount": discount["id"]})
        totals_by_rate: dict[str, dict[str, Any]] = {}
        for line, taxable in zip(lines, remaining, strict=True):
            tax_key = line.pop("_tax_key")
            if tax_mode == "none":
                continue
            spec_key = "reverse_charge" if tax_mode == "reverse_charge" else tax_key
            spec = next(s for s in TAX_RATES if s.key == spec_key)
            rate_id = self.tax_rates[spec_key]["id"]
            tax = {
                "amount": percent_of(taxable, spec.basis_points),
                "tax_behavior": "exclusive",
                "tax_rate_details": {"tax_rate": rate_id},
                "taxability_reason": spec.taxability_reason,
                "taxable_amount": taxable,
                "type": "tax_rate_details",
            }
            line["taxes"].append(tax)
            total = totals_by_rate.setdefault(rate_id, {**tax, "amount": 0, "taxable_amount": 0})
            total["amount"] += tax["amount"]
            total["taxable_amount"] += taxable
        return total_discounts, list(totals_by_rate.values())

    def create_invoice(
        self,
        customer: dict[str, Any],
        persona: Persona,
        *,
        at: int,
        items: list[tuple[str, int]],
        billing_reason: str,
        subscription: tuple[str, str] | None = None,
        period: tuple[int, int] | None = None,
        discounts: tuple[dict[str, Any], ...] = (),
        coupons: tuple[str, ...] = (),
        collection_method: str = "charge_automatically",
    ) -> dict[str, Any]:
        """A finalized invoice (status open); `collect` then pays, fails or voids it.

        `discounts` are the customer's or subscription's running discounts; `coupons` are
        redeemed on this invoice alone."""
        invoice_id = self.ids.new("in")
        discounts = discounts + tuple(
            self.discount(code, customer["id"], at, invoice=invoice_id) for code in coupons
        )
        currency = customer["currency"]
        lines = [
            self._line(
                invoice_id=invoice_id,
                currency=currency,
                product_key=key,
                quantity=qty,
                period=period or (at, at),
                subscription=subscription,
                title=self.rng.choice(ARTICLE_TITLES) if key == "article" else None,
            )
            for key, qty in items
        ]
        total_discounts, total_taxes = self._apply_discounts_and_taxes(
            lines, list(discounts), persona.tax_mode
        )
        subtotal = sum(line["amount"] for line in lines)
        discount_total = sum(d["amount"] for d in total_discounts)
        total = subtotal - discount_total + sum(t["amount"] for t in total_taxes)
        finalized = at if billing_reason == "subscription_create" else at + 3600
        if billing_reason == "manual":
            finalized = at + 300
        self.invoice_seq[customer["id"]] += 1
        customer["next_invoice_sequence"] = self.invoice_seq[customer["id"]] + 1
        token = self.ids.token(40)
        parent = None
        if subscription:
            parent = {
                "quote_details": None,
                "subscription_details": {"metadata": {}, "subscription": subscription[0]},
                "type": "subscription_details",
            }
        invoice = {
            "account_country": "FR",
            "account_name": ACCOUNT_NAME,
            "account_tax_ids": None,
            "amount_due": total,
            "amount_paid": 0,
            "amount_remaining": total,
            "amount_shipping": 0,
            "application": None,
            "attempt_count": 0,
            "attempted": False,
            "auto_advance": collection_method == "charge_automatically",
            "automatic_tax": {
                "enabled": False,
                "liability": {"type": "account"},
                "status": None,
                "disabled_reason": None,
                "provider": None,
            },
            "billing_reason": billing_reason,
            "collection_method": collection_method,
            "created": at,
            "currency": currency,
            "custom_fields": None,
            "customer": customer["id"],
            "customer_address": dict(customer["address"]),
            "customer_email": customer["email"],
            "customer_name": customer["name"],
            "customer_phone": customer["phone"],
            "customer_shipping": None,
            "customer_tax_exempt": customer["tax_exempt"],
            "customer_tax_ids": self.customer_tax_ids(customer["id"]),
            "default_payment_method": None,
            "default_source": None,
            "default_tax_rates": [],
            "description": None,
            "discounts": [d["id"] for d in discounts],
            "due_date": at + 30 * DAY if collection_method == "send_invoice" else None,
            "effective_at": finalized,
            "ending_balance": 0,
            "footer": None,
            "from_invoice": None,
            "hosted_invoice_url": f"https://invoice.stripe.com/i/{ACCOUNT_ID}/test_{token}?s=ap",
            "id": invoice_id,
            "invoice_pdf": f"https://pay.stripe.com/invoice/{ACCOUNT_ID}/test_{token}/pdf?s=ap",
            "issuer": {"type": "self"},
            "last_finalization_error": None,
            "latest_revision": None,
            "lines": {
                "data": lines,
                "has_more": False,
                "object": "list",
                "url": f"/v1/invoices/{invoice_id}/lines",
            },
            "livemode": False,
            "metadata": {},
            "next_payment_attempt": None,
            "number": f"{customer['invoice_prefix']}-{self.invoice_seq[customer['id']]:04d}",
            "object": "invoice",
            "on_behalf_of": None,
            "payment_settings": {
                "default_mandate": None,
                "payment_method_options": None,
                "payment_method_types": None,
            },
            "period_end": at,
            "period_start": at,
            "post_payment_credit_notes_amount": 0,
            "pre_payment_credit_notes_amount": 0,
            "receipt_number": None,
            "rendering": {
                "amount_tax_display": None,
                "pdf": {"page_size": "auto"},
                "template": None,
                "template_version": None,
            },
            "shipping_cost": None,
            "shipping_details": None,
            "starting_balance": 0,
            "statement_descriptor": None,
            "status": "open",
            "status_transitions": {
                "finalized_at": finalized,
                "marked_uncollectible_at": None,
                "paid_at": None,
                "voided_at": None,
            },
            "subscription": None,
            "subtotal": subtotal,
            "subtotal_excluding_tax": subtotal,
            "test_clock": None,
            "total": total,
            "total_discount_amounts": total_discounts,
            "total_excluding_tax": subtotal - discount_total,
            "webhooks_delivered_at": finalized,
            "automatically_finalizes_at": None,
            "total_pretax_credit_amounts": [
                {
                    "amount": d["amount"],
                    "credit_balance_transaction": None,
                    "discount": d["discount"],
                    "type": "discount",
                }
                for d in total_discounts
            ],
            "total_taxes": total_taxes,
            "amount_overpaid": 0,
            "parent": parent,
            "customer_account": None,
        }
        self.add("invoices", invoice)
        self.emit("invoice.finalized", invoice, finalized)
        return invoice

    def collect(
        self, invoice: dict[str, Any], *, attempts: list[bool], spacing: int = 3 * DAY
    ) -> dict[str, Any] | None:
        """Charge an open invoice: one payment intent, one attempt per entry of `attempts`
        (True = the card is accepted). Returns the successful charge, if any."""
        finalized = invoice["status_transitions"]["finalized_at"]
        if invoice["amount_due"] == 0:
            self._mark_paid(invoice, finalized)
            return None
        customer = self.customer_by_id[invoice["customer"]]
        description = {
            "subscription_create": "Subscription creation",
            "subscription_cycle": "Subscription update",
        }.get(invoice["billing_reason"], "Payment for Invoice")
        intent = self._payment_intent(
            customer, invoice["amount_due"], finalized, description, {}, off_session=True
        )
        invoice_payment = {
            "amount_paid": None,
            "amount_requested": invoice["amount_due"],
            "created": finalized,
            "currency": invoice["currency"],
            "id": self.ids.new("inpay"),
            "invoice": invoice["id"],
            "is_default": True,
            "livemode": False,
            "object": "invoice_payment",
            "payment": {"type": "payment_intent", "payment_intent": intent["id"]},
            "status": "open",
            "status_transitions": {"canceled_at": None, "paid_at": None},
        }
        self.add("invoice_payments", invoice_payment)
        succeeded = None
        for number, accepted in enumerate(attempts):
            at = finalized + 2 + number * spacing
            if not self.within(at):
                break
            invoice["attempt_count"] += 1
            invoice["attempted"] = True
            charge = self._charge(customer, intent, at, description, accepted=accepted)
            if not accepted:
                retry_at = at + spacing
                more = number + 1 < len(attempts) and self.within(retry_at)
                invoice["next_payment_attempt"] = retry_at if more else None
                self.emit("invoice.payment_failed", invoice, at + 1)
                continue
            invoice["next_payment_attempt"] = None
            invoice_payment["amount_paid"] = invoice["amount_due"]
            invoice_payment["status"] = "paid"
            invoice_payment["status_transitions"]["paid_at"] = at
            self.emit("invoice_payment.paid", invoice_payment, at + 1)
            self._mark_paid(invoice, at + 1)
            succeeded = charge
            break
        if succeeded is None and invoice["attempted"]:
            customer["delinquent"] = True
        return succeeded

    def _mark_paid(self, invoice: dict[str, Any], at: int) -> None:
        invoice["amount_paid"] = invoice["amount_due"]
        invoice["amount_remaining"] = 0
        invoice["status"] = "paid"
        invoice["status_transitions"]["paid_at"] = at
        self.emit("invoice.paid", invoice, at)

    def void(self, invoice: dict[str, Any], at: int) -> None:
        invoice["status"] = "void"
        invoice["status_transitions"]["voided_at"] = at
        self.emit("invoice.voided", invoice, at, by_api=True)

    # -- payments --------------------------------------------------------------------------
    def _payment_intent(
        self,
        customer: dict[str, Any],
        amount: int,
        at: int,
        description: str,
        metadata: dict[str, str],
        *,
        off_session: bool,
        intent_id: str | None = None,
        guest: bool = False,
    ) -> dict[str, Any]:
        """`intent_id`: an id given elsewhere (Aipress24 stores its payment intents' ids).
        `guest`: a Checkout payment made with only `customer_email`, for which Stripe creates
        no customer: `customer` then stands for the buyer (its `id` keys the card and the fee
        region, nothing more) and the intent names no customer."""
        if intent_id is None:
            intent_id = self.ids.new("pi")
        else:
            self.ids.reserve((intent_id,))
        intent = {
            "amount": amount,
            "amount_capturable": 0,
            "amount_details": {"tip": {}},
            "amount_received": 0,
            "application": None,
            "application_fee_amount": None,
            "automatic_payment_methods": {"enabled": True},
            "canceled_at": None,
            "cancellation_reason": None,
            "capture_method": "automatic",
            "client_secret": f"{intent_id}_secret_{self.ids.token(25)}",
            "confirmation_method": "automatic",
            "created": at,
            "currency": customer["currency"],
            "customer": None if guest else customer["id"],
            "description": description,
            "id": intent_id,
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "metadata": metadata,
            "next_action": None,
            "object": "payment_intent",
            "on_behalf_of": None,
            "payment_method": self.cards[customer["id"]]["payment_method"],
            "payment_method_configuration_details": None,
            "payment_method_options": {},
            "payment_method_types": ["card"],
            "processing": None,
            "receipt_email": customer["email"],
            "review": None,
            "setup_future_usage": "off_session" if off_session else None,
            "shipping": None,
            "statement_descriptor": None,
            "statement_descriptor_suffix": None,
            "status": "requires_payment_method",
            "transfer_data": None,
            "transfer_group": None,
            "source": None,
            "excluded_payment_method_types": None,
            "customer_account": None,
            "managed_payments": {"enabled": False},
        }
        return self.add("payment_intents", intent)

    def _charge(
        self,
        customer: dict[str, Any],
        intent: dict[str, Any],
        at: int,
        description: str,
        *,
        accepted: bool,
        guest: bool = False,
    ) -> dict[str, Any]:
        """`guest`: as for `_payment_intent`, the charge names no customer."""
        card = self.cards[customer["id"]]
        amount = intent["amount"]
        charge_id = self.ids.new("ch")
        outcome = {
            "advice_code": None,
            "network_advice_code": None,
            "network_decline_code": None,
            "network_status": "approved_by_network",
            "reason": None,
            "seller_message": "Payment complete.",
            "type": "authorized",
        }
        failure_code = failure_message = None
        if not accepted:
            failure_code, failure_message = "card_declined", "Your card has insufficient funds."
            outcome = {
                "advice_code": "try_again_later",
                "network_advice_code": None,
                "network_decline_code": "51",
                "network_status": "declined_by_network",
                "reason": "insufficient_funds",
                "seller_message": "The bank returned the decline code `insufficient_funds`.",
                "type": "issuer_declined",
            }
        charge = {
            "amount": amount,
            "amount_captured": amount if accepted else 0,
            "amount_refunded": 0,
            "application": None,
            "application_fee": None,
            "application_fee_amount": None,
            "balance_transaction": None,
            "billing_details": {
                "address": dict(customer["address"]),
                "email": customer["email"],
                "name": customer["name"],
                "phone": None,
                "tax_id": None,
            },
            "calculated_statement_descriptor": STATEMENT_DESCRIPTOR,
            "captured": accepted,
            "created": at,
            "currency": customer["currency"],
            "customer": None if guest else customer["id"],
            "description": description,
            "disputed": False,
            "failure_balance_transaction": None,
            "failure_code": failure_code,
            "failure_message": failure_message,
            "fraud_details": {},
            "id": charge_id,
            "livemode": False,
            "metadata": dict(intent["metadata"]),
            "object": "charge",
            "on_behalf_of": None,
            "outcome": outcome,
            "paid": accepted,
            "payment_intent": intent["id"],
            "payment_method": card["payment_method"],
            "payment_method_details": {
                "card": {
                    "amount_authorized": amount if accepted else None,
                    "brand": card["brand"],
                    "checks": {
                        "address_line1_check": None,
                        "address_postal_code_check": None,
                        "cvc_check": "pass",
                    },
                    "country": card["country"],
                    "exp_month": card["exp_month"],
                    "exp_year": card["exp_year"],
                    "extended_authorization": {"status": "disabled"},
                    "fingerprint": card["fingerprint"],
                    "funding": card["funding"],
                    "incremental_authorization": {"status": "unavailable"},
                    "installments": None,
                    "last4": card["last4"],
                    "mandate": None,
                    "multicapture": {"status": "unavailable"},
                    "network": card["brand"],
                    "network_token": {"used": False},
                    "overcapture": {"maximum_amount_capturable": amount, "status": "unavailable"},
                    "three_d_secure": None,
                    "wallet": None,
                    "authorization_code": f"{self.rng.randint(0, 999_999):06d}"
                    if accepted
                    else None,
                    "regulated_status": "unregulated",
                    "network_transaction_id": None,
                    "transaction_link_id": None,
                },
                "type": "card",
            },
            "receipt_email": customer["email"],
            "receipt_number": None,
            "receipt_url": f"https://pay.stripe.com/receipts/payment/{self.ids.token(60)}",
            "refunded": False,
            "refunds": {
                "data": [],
                "has_more": False,
                "object": "list",
                "url": f"/v1/charges/{charge_id}/refunds",
            },
            "review": None,
            "shipping": None,
            "source_transfer": None,
            "statement_descriptor": None,
            "statement_descriptor_suffix": None,
            "status": "succeeded" if accepted else "failed",
            "transfer_data": None,
            "transfer_group": None,
            "source": None,
        }
        self.add("charges", charge)
        intent["latest_charge"] = charge_id
        if accepted:
            txn = self._charge_transaction(charge, card_region=self.charge_region[customer["id"]])
            charge["balance_transaction"] = txn["id"]
            intent["status"] = "succeeded"
            intent["amount_received"] = amount
            intent["last_payment_error"] = None
            self.emit("charge.succeeded", charge, at)
            self.emit("payment_intent.succeeded", intent, at)
        else:
            intent["last_payment_error"] = {
                "type": "card_error",
                "code": failure_code,
                "decline_code": "insufficient_funds",
                "message": failure_message,
                "charge": charge_id,
            }
            self.emit("charge.failed", charge, at)
            self.emit("payment_intent.payment_failed", intent, at)
        return charge

    def _charge_transaction(
        self, charge: dict[str, Any], *, card_region: str | None = None
    ) -> dict[str, Any]:
        """`card_region`: the fee's (default: the charge's customer's; a guest charge has none)."""
        currency = charge["currency"]
        if card_region is None:
            card_region = self.charge_region[charge["customer"]]
        fee = stripe_fee(charge["amount"], currency, card_region)
        return self.add(
            "balance_transactions",
            {
                "amount": charge["amount"],
                "available_on": _midnight(charge["created"]) + AVAILABLE_AFTER_DAYS * DAY,
                "created": charge["created"],
                "currency": currency,
                "description": charge["description"],
                "exchange_rate": None,
                "fee": fee,
                "fee_details": [
                    {
                        "amount": fee,
                        "application": None,
                        "currency": currency,
                        "description": "Stripe processing fees",
                        "type": "stripe_fee",
                    }
                ],
                "id": self.ids.new("txn"),
                "net": charge["amount"] - fee,
                "object": "balance_transaction",
                "reporting_category": "charge",
                "source": charge["id"],
                "status": "pending",
                "type": "charge",
                "balance_type": "payments",
            },
        )

    def purchase_article(self, customer: dict[str, Any], persona: Persona, at: int) -> dict:
        """An article bought through Checkout in payment mode: a payment intent and its charge,
        no invoice. The amount includes French VAT at 2.1 % where it applies."""
        net = PRODUCTS["article"].prices[customer["currency"]]
        amount = net + (percent_of(net, 210) if persona.tax_mode == "fr_vat" else 0)
        title = self.rng.choice(ARTICLE_TITLES)
        metadata = {"ap24_kind": "article_purchase", "ap24_purchase_id": self.snowflake(at)}
        intent = self._payment_intent(
            customer, amount, at, f"Article : « {title} »", metadata, off_session=False
        )
        return self._charge(customer, intent, at + 3, intent["description"], accepted=True)

    def refund(self, charge: dict[str, Any], amount: int, at: int, reason: str) -> None:
        refund = {
            "amount": amount,
            "balance_transaction": None,
            "charge": charge["id"],
            "created": at,
            "currency": charge["currency"],
            "destination_details": {"card": {"type": "refund"}, "type": "card"},
            "id": self.ids.new("re"),
            "metadata": {},
            "object": "refund",
            "payment_intent": charge["payment_intent"],
            "reason": reason,
            "receipt_number": None,
            "source_transfer_reversal": None,
            "status": "succeeded",
            "transfer_reversal": None,
            "customer": charge["customer"],
            "customer_account": None,
            "payment_method": charge["payment_method"],
        }
        txn = self.add(
            "balance_transactions",
            {
                "amount": -amount,
                "available_on": at,
                "created": at,
                "currency": charge["currency"],
                "description": f"REFUND FOR CHARGE ({charge['description']})",
                "exchange_rate": None,
                "fee": 0,
                "fee_details": [],
                "id": self.ids.new("txn"),
                "net": -amount,
                "object": "balance_transaction",
                "reporting_category": "refund",
                "source": refund["id"],
                "status": "pending",
                "type": "refund",
                "balance_type": "payments",
            },
        )
        refund["balance_transaction"] = txn["id"]
        self.add("refunds", refund)
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        charge["refunds"]["data"].insert(0, refund)
        self.emit("charge.refunded", charge, at)
        self.emit("refund.created", refund, at, by_api=True)

    # -- payouts and balance ---------------------------------------------------------------
    def pay_out(self) -> dict[str, list[str]]:
        """Weekly automatic payouts (Mondays): each pays, per currency, every balance transaction
        available by then and not yet paid out, when their sum is positive."""
        members: dict[str, list[str]] = {}
        unpaid: dict[str, list[dict[str, Any]]] = {}
        for txn in sorted(
            self.collections["balance_transactions"], key=lambda t: self.order[t["id"]]
        ):
            unpaid.setdefault(txn["currency"], []).append(txn)
        first = datetime.fromtimestamp(self.start, tz=UTC)
        monday = first + timedelta(days=(7 - first.weekday()) % 7)
        monday = monday.replace(hour=0, minute=0, second=0)
        while (created := _ts(monday) + 6 * 3600) < self.end:
            for currency, pending in unpaid.items():
                ready = [t for t in pending if t["available_on"] <= _ts(monday)]
                amount = sum(t["net"] for t in ready)
                if amount <= 0:
                    continue
                payout = self._payout(currency, amount, created)
                members[payout["id"]] = [t["id"] for t in ready] + [payout["balance_transaction"]]
                unpaid[currency] = [t for t in pending if t["available_on"] > _ts(monday)]
            monday += timedelta(days=7)
        return members

    def _payout(self, currency: str, amount: int, created: int) -> dict[str, Any]:
        if currency not in self.bank_accounts:
            self.bank_accounts[currency] = self.ids.new("ba")
        arrival = _midnight(created) + PAYOUT_ARRIVAL_DAYS * DAY
        payout_id = self.ids.new("po")
        txn = self.add(
            "balance_transactions",
            {
                "amount": -amount,
                "available_on": created,
                "created": created,
                "currency": currency,
                "description": "STRIPE PAYOUT",
                "exchange_rate": None,
                "fee": 0,
                "fee_details": [],
                "id": self.ids.new("txn"),
                "net": -amount,
                "object": "balance_transaction",
                "reporting_category": "payout",
                "source": payout_id,
                "status": "available",
                "type": "payout",
                "balance_type": "payments",
            },
        )
        payout = {
            "amount": amount,
            "application_fee": None,
            "application_fee_amount": None,
            "arrival_date": arrival,
            "automatic": True,
            "balance_transaction": txn["id"],
            "created": created,
            "currency": currency,
            "description": "STRIPE PAYOUT",
            "destination": self.bank_accounts[currency],
            "failure_balance_transaction": None,
            "failure_code": None,
            "failure_message": None,
            "id": payout_id,
            "livemode": False,
            "metadata": {},
            "method": "standard",
            "object": "payout",
            "original_payout": None,
            "reconciliation_status": "completed",
            "reversed_by": None,
            "source_type": "card",
            "statement_descriptor": None,
            "status": "pending",
            "type": "bank_account",
            "trace_id": {"status": "pending", "value": None},
            "payout_method": None,
        }
        self.add("payouts", payout)
        self.emit("payout.created", payout, created)
        if arrival < self.end:
            payout["status"] = "paid"
            payout["trace_id"] = {"status": "supported", "value": f"FR{self.ids.token(12).upper()}"}
            self.emit("payout.paid", payout, arrival)
        else:
            payout["status"] = "in_transit"
        return payout

    def settle_statuses(self) -> None:
        for txn in self.collections["balance_transactions"]:
            txn["status"] = "available" if txn["available_on"] <= self.end else "pending"

    def balance(self) -> dict[str, Any]:
        currencies: list[str] = []
        for txn in self.collections["balance_transactions"]:
            if txn["currency"] not in currencies:
                currencies.append(txn["currency"])
        currencies.sort(key=lambda c: (c != "eur", c))

        def total(currency: str, status: str) -> int:
            return sum(
                t["net"]
                for t in self.collections["balance_transactions"]
                if t["currency"] == currency and t["status"] == status
            )

        def entries(status: str) -> list[dict[str, Any]]:
            return [
                {
                    "amount": total(c, status),
                    "currency": c,
                    "source_types": {"card": total(c, status)},
                }
                for c in currencies
            ]

        return {
            "available": entries("available"),
            "connect_reserved": [{"amount": 0, "currency": c} for c in currencies],
            "livemode": False,
            "object": "balance",
            "pending": entries("pending"),
        }

    # -- one customer's story --------------------------------------------------------------
    def live(self, persona: Persona, created: int, number: int) -> None:
        """Create the customer, then play what they do in time order (so that invoice numbers
        follow finalization order, as Stripe's do)."""
        customer = self.create_customer(persona, created, number)
        self.customer_by_id[customer["id"]] = customer
        actions: list[tuple[int, int, Callable[[], Any]]] = []
        if persona.plan:
            actions += self._subscription_cycles(customer, persona, created + 600)
        for items, scenario in self._purchase_plan(persona):
            at = self._moment_after(created)
            if at is not None:
                actions.append(
                    (at, len(actions), partial(self._buy, customer, persona, at, items, scenario))
                )
        article_times = sorted(
            at for at in (self._moment_after(created) for _ in range(persona.articles)) if at
        )
        for position, at in enumerate(article_times):
            refund = position == 0 and "full_refund" in persona.scenarios
            actions.append(
                (at, len(actions), partial(self._article, customer, persona, at, refund=refund))
            )
        for _, _, action in sorted(actions, key=lambda item: item[:2]):
            action()

    def _moment_after(self, created: int) -> int | None:
        """A random moment in the customer's life, or None when the period is over."""
        earliest, latest = created + 3600, self.end - 3 * DAY
        if earliest >= latest:
            return None
        return self.rng.randint(earliest, latest)

    def _subscription_cycles(
        self, customer: dict[str, Any], persona: Persona, anchor_ts: int
    ) -> list[tuple[int, int, Callable[[], Any]]]:
        assert persona.plan is not None
        step = 1 if PRODUCTS[persona.plan].interval == "month" else 12
        subscription = (self.ids.new("sub"), self.ids.new("si", 14, lead=""))
        anchor = datetime.fromtimestamp(anchor_ts, tz=UTC)
        welcome = None
        if "welcome_coupon" in persona.scenarios:
            welcome = self.discount(
                "BIENVENUE20", customer["id"], anchor_ts, subscription=subscription[0]
            )
        cycles = []
        cycle = 0
        while (start := _ts(add_months(anchor, cycle * step))) < self.end:
            end = _ts(add_months(anchor, (cycle + 1) * step))
            discounts = tuple(
                d for d in (customer["discount"], welcome if cycle == 0 else None) if d
            )
            cycles.append(
                (
                    start,
                    -1,
                    partial(
                        self._bill_cycle,
                        customer,
                        persona,
                        subscription,
                        cycle,
                        (start, end),
                        discounts,
                    ),
                )
            )
            cycle += 1
        return cycles

    def _bill_cycle(
        self,
        customer: dict[str, Any],
        persona: Persona,
        subscription: tuple[str, str],
        cycle: int,
        period: tuple[int, int],
        discounts: tuple[dict[str, Any], ...],
    ) -> None:
        assert persona.plan is not None
        invoice = self.create_invoice(
            customer,
            persona,
            at=period[0],
            items=[(persona.plan, persona.quantity)],
            billing_reason="subscription_create" if cycle == 0 else "subscription_cycle",
            subscription=subscription,
            period=period,
            discounts=discounts,
        )
        failing = "failed_then_paid" in persona.scenarios and cycle == 1
        charge = self.collect(invoice, attempts=[False, True] if failing else [True])
        if "partial_refund" in persona.scenarios and cycle == 0 and charge:
            at = charge["created"] + 12 * DAY
            if self.within(at):
                self.refund(charge, charge["amount"] // 4, at, "requested_by_customer")

    @staticmethod
    def _purchase_plan(persona: Persona) -> list[tuple[list[tuple[str, int]], str | None]]:
        """The persona's one-off invoices, each with the special case it plays (at most one
        invoice per case: mixed VAT rates, a 100 % coupon, a voided invoice, a failed payment)."""
        plan = []
        pending = [
            s for s in ("mixed_vat", "zero_total", "void", "failed_open") if s in persona.scenarios
        ]
        for items in persona.purchases:
            categories = {PRODUCTS[key].category for key, _ in items}
            scenario = next((s for s in pending if s != "mixed_vat" or len(categories) >= 3), None)
            if scenario:
                pending.remove(scenario)
            plan.append((list(items), scenario))
        return plan

    def _buy(
        self,
        customer: dict[str, Any],
        persona: Persona,
        at: int,
        items: list[tuple[str, int]],
        scenario: str | None,
    ) -> None:
        coupons = {"zero_total": ("INVITATION-PRESSE",), "mixed_vat": ("GESTE-10EUR",)}
        invoice = self.create_invoice(
            customer,
            persona,
            at=at,
            items=items,
            billing_reason="manual",
            discounts=(customer["discount"],) if customer["discount"] else (),
            coupons=coupons.get(scenario or "", ()),
            collection_method="send_invoice" if scenario == "void" else "charge_automatically",
        )
        if scenario == "void":
            self.void(invoice, min(at + DAY, self.end - 1))
            return
        charge = self.collect(invoice, attempts=[scenario != "failed_open"])
        if charge and "partial_refund" in persona.scenarios and not persona.plan:
            refund_at = charge["created"] + 5 * DAY
            if self.within(refund_at):
                self.refund(charge, charge["amount"] // 3, refund_at, "requested_by_customer")

    def _article(
        self, customer: dict[str, Any], persona: Persona, at: int, *, refund: bool
    ) -> None:
        charge = self.purchase_article(customer, persona, at)
        refund_at = charge["created"] + 2 * DAY
        if refund and self.within(refund_at):
            self.refund(charge, charge["amount"], refund_at, "requested_by_customer")


def generate(
    *,
    seed: int = DEFAULT_SEED,
    customers: int = DEFAULT_CUSTOMERS,
    start: datetime | None = None,
    months: int = DEFAULT_MONTHS,
    refund_share: float = 0.0,
) -> StripeDataset:
    """The account history for `customers` customers over `months` months from `start`.
    With `refund_share` (0 to 1), more paid invoices are refunded, at random, until that share
    of them carry a refund (the personas alone refund 3.5 to 7.7 % of them).

    The same arguments always give the same objects, ids included."""
    start = DEFAULT_START if start is None else start
    if start.tzinfo is None:
        raise ValueError("start must be an aware datetime (UTC)")
    if customers < 0 or months < 1:
        raise ValueError("customers must be >= 0 and months >= 1")
    if not 0 <= refund_share <= 1:
        raise ValueError("refund_share is a share between 0 and 1")
    end = add_months(start, months)
    story = _Story(seed=seed, start=start, end=end)
    story.set_up_account()
    personas = _anchor_personas()[:customers]
    span = _ts(end) - _ts(start)
    moments = [
        _ts(start) + i * DAY + story.rng.randint(3600, 20 * 3600) for i in range(len(personas))
    ]
    while len(personas) < customers:
        personas.append(story.random_persona())
        moments.append(_ts(start) + story.rng.randint(0, span * 7 // 10))
    for number, (persona, created) in enumerate(zip(personas, moments, strict=True)):
        story.live(persona, created, number)
    if refund_share:
        story.refund_paid_invoices(refund_share)
    payout_transactions = story.pay_out()
    story.settle_statuses()
    collections = {
        name: sorted(objects, key=lambda obj: story.order[obj["id"]])
        for name, objects in story.collections.items()
    }
    return StripeDataset(
        seed=seed,
        start=start,
        end=end,
        collections=collections,
        balance=story.balance(),
        payout_transactions=payout_transactions,
        order=story.order,
    )
