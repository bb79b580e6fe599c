"""Obviously synthetic people, institutions and code catalogues for the generator.

Nothing here may look like real data (documents.md §1: tests and demos use synthetic data only):

- every person name is ``가상`` + a given name from `GIVEN_NAMES` (the set is `SYNTHETIC_NAMES`);
- every 주민등록번호 has the marker ``99`` right after the gender digit (`SYNTHETIC_RRN_MARK`), and
  its birth date/gender digit are valid per ID-2 so documents pass R-032/R-035;
- every 요양기관기호 starts with ``99`` (no real HIRA institution uses that range) and every
  institution name starts with ``예시``; 사업자등록번호 carry a correct ID-3 check digit;
- drug/procedure/material codes are fictitious (``69999…`` drugs, ``…9…`` procedure codes).

The catalogues are module constants (not seed-dependent) so codes are stable across corpora; which
patient/institution appears where is drawn from the generator's seeded ``random.Random``.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from decimal import Decimal

GIVEN_NAMES: tuple[str, ...] = (
    "민준", "서연", "도윤", "지우", "하준", "서윤", "시우", "하윤", "지호", "지유", "주원", "채원",
    "예준", "수아", "유준", "지아", "건우", "다은", "현우", "은서", "선우", "예린", "우진", "소율",
    "연우", "윤서", "정우", "민서", "승현", "가은", "길동", "철수", "영희", "몽룡", "춘향", "흥부",
)  # fmt: skip
NAME_MARK = "가상"
SYNTHETIC_NAMES: frozenset[str] = frozenset(NAME_MARK + g for g in GIVEN_NAMES)
SYNTHETIC_RRN_MARK = "99"  # rrn[7:9]: the recognisable synthetic tail
YKIHO_PREFIX = "99"
INSTITUTION_NAME_PREFIX = "예시"

_BRN_WEIGHTS = (1, 3, 7, 1, 3, 7, 1, 3, 5)


def brn_with_check_digit(first9: str) -> str:
    """Complete 9 digits to a 사업자등록번호 with the ID-3 check digit."""
    d = [int(c) for c in first9]
    s = sum(a * w for a, w in zip(d, _BRN_WEIGHTS, strict=True)) + (d[8] * 5) // 10
    return first9 + str((10 - s % 10) % 10)


def synthetic_name(rng: random.Random) -> str:
    return NAME_MARK + rng.choice(GIVEN_NAMES)


@dataclass(frozen=True)
class Patient:
    name: str
    rrn: str
    birth: dt.date
    reg_no: str  # 환자등록번호 (the same chart number at every institution keeps linking simple)


def make_patient(rng: random.Random, index: int) -> Patient:
    """A patient born 1940…2016, so the birth date never follows a 2017+ issue date (R-035)."""
    birth = dt.date(1940, 1, 1) + dt.timedelta(
        days=rng.randrange(0, (dt.date(2016, 12, 31) - dt.date(1940, 1, 1)).days)
    )
    female = rng.random() < 0.5
    foreign = rng.random() < 0.02  # 외국인등록번호 digits 5…8 are valid too (ID-2)
    if birth.year < 2000:
        gender = (6 if female else 5) if foreign else (2 if female else 1)
    else:
        gender = (8 if female else 7) if foreign else (4 if female else 3)
    rrn = f"{birth:%y%m%d}{gender}{SYNTHETIC_RRN_MARK}{index % 10000:04d}"
    return Patient(synthetic_name(rng), rrn, birth, f"{index + 1:08d}")


@dataclass(frozen=True)
class Institution:
    ykiho: str
    name: str
    kind: str  # clinic | hospital | dental | pharmacy (generator role, not a document field)
    type_code: str  # ID-8
    department_code: str  # ID-7 main department (unused for pharmacies)
    business_reg_no: str
    representative: str
    address: str
    phone: str
    doctor: str  # prescriber (의사/치과의사) or pharmacist (약사)
    license_no: str
    version_style: str  # "sequential" (1, 2, …) or "timestamp" (YYYYMMDDhhmmss), both allowed by §2.2

    def block(self) -> dict[str, str]:
        """The document's ``institution`` object (§2.3)."""
        return {
            "ykiho": self.ykiho,
            "name": self.name,
            "type_code": self.type_code,
            "business_reg_no": self.business_reg_no,
            "representative": self.representative,
            "address": self.address,
            "phone": self.phone,
        }


# (kind, type_code, name stem, department) — stems make names like 예시가정의원, 예시중앙병원.
_INSTITUTION_KINDS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "clinic": (("31", "가정", "23"), ("31", "내과", "01"), ("31", "소아청소년과", "11"),
               ("31", "이비인후과", "13"), ("31", "정형외과", "05"), ("31", "피부과", "14")),
    "hospital": (("21", "중앙", "01"), ("11", "종합", "04"), ("21", "바른", "05")),
    "dental": (("51", "튼튼", "49"),),
    "pharmacy": (("81", "온누리", "00"), ("81", "새봄", "00"), ("81", "하나", "00")),
}  # fmt: skip
_SUFFIX = {"clinic": "의원", "hospital": "병원", "dental": "치과의원", "pharmacy": "약국"}
_YKIHO_BLOCK = {"clinic": 1, "hospital": 2, "dental": 3, "pharmacy": 8}


def make_institutions(rng: random.Random, kind: str, n: int) -> list[Institution]:
    out = []
    for i in range(n):
        type_code, stem, dept = _INSTITUTION_KINDS[kind][i % len(_INSTITUTION_KINDS[kind])]
        number = i // len(_INSTITUTION_KINDS[kind]) + 1
        name = f"{INSTITUTION_NAME_PREFIX}{stem}{_SUFFIX[kind]}" + (f"{number}" if number > 1 else "")
        seq = _YKIHO_BLOCK[kind] * 100000 + i + 1
        brn = brn_with_check_digit(
            f"{rng.randrange(100, 900)}{rng.randrange(81, 90)}{rng.randrange(0, 10000):04d}"
        )
        out.append(Institution(
            ykiho=f"{YKIHO_PREFIX}{seq:06d}",
            name=name,
            kind=kind,
            type_code=type_code,
            department_code=dept,
            business_reg_no=brn,
            representative=synthetic_name(rng),
            address=f"서울특별시 예시구 예시로 {seq % 1000}",
            phone=f"02-000-{seq % 10000:04d}",
            doctor=synthetic_name(rng),
            license_no=f"{rng.randrange(10000, 99999)}",
            version_style="timestamp" if rng.random() < 0.25 else "sequential",
        ))  # fmt: skip
    return out


# ------------------------------------------------------------------------------ code catalogues


@dataclass(frozen=True)
class Drug:
    code: str  # ID-6 drug syntax, 9 characters
    name: str
    unit: str
    unit_price: Decimal  # 원 per dose unit
    dose: Decimal
    injection: bool = False


_FORMS = (
    ("정", "정", "1"),
    ("캡슐", "캡슐", "1"),
    ("시럽", "mL", "2.5"),
    ("산", "g", "0.5"),
    ("정", "정", "0.5"),
)
DRUGS: tuple[Drug, ...] = tuple(
    Drug(
        code=f"69999{n:04d}",
        name=f"가상{form}{(n * 37) % 900 + 100}밀리그램" if unit != "mL" else f"가상{form}{n}",
        unit=unit,
        unit_price=Decimal(50 + (n * 53) % 450) + (Decimal("0.5") if n % 4 == 0 else Decimal(0)),
        dose=Decimal(dose),
    )
    for n in range(1, 61)
    for form, unit, dose in (_FORMS[n % len(_FORMS)],)
)
INJECTIONS: tuple[Drug, ...] = tuple(
    Drug(code=f"69998{n:04d}", name=f"가상주사액{n}", unit="mL", unit_price=Decimal("666.67") + n * 100,
         dose=Decimal(1 + n % 3), injection=True)
    for n in range(1, 13)
)  # fmt: skip
KCD_CODES: tuple[str, ...] = (
    "J06.9", "J00", "J02.9", "J20.9", "K29.7", "K52.9", "M54.5", "M25.56", "L30.9", "H66.9",
    "I10", "E11.9", "E78.5", "R51", "N39.0", "S93.40", "A09.9", "K02.1", "J30.4", "H10.9",
)  # fmt: skip


@dataclass(frozen=True)
class Service:
    """One chargeable item of the 세부산정내역: receipt row, code (type), name, unit price."""

    item: str
    code: str
    code_type: str
    name: str
    price: Decimal
    coverage: str = "covered"  # covered | full_copay (100/100, U) | non_covered (W)


def _svc(item: str, code: str, code_type: str, name: str, price: str, coverage: str = "covered") -> Service:
    return Service(item, code, code_type, name, Decimal(price), coverage)


SERVICES: dict[str, tuple[Service, ...]] = {
    "consultation": (_svc("consultation", "AA9154", "edi_procedure", "초진진찰료(예시)", "18410"),
                     _svc("consultation", "AA9254", "edi_procedure", "재진진찰료(예시)", "13170")),
    "lab_test": tuple(_svc("lab_test", f"B99{n:02d}", "edi_procedure", f"검사{n}(예시)", p)
                      for n, p in ((1, "6010"), (2, "3990"), (3, "1530"), (4, "11280"), (5, "2460.5"))),
    "imaging": (_svc("imaging", "G9901", "edi_procedure", "단순영상진단(예시)", "9870"),
                _svc("imaging", "G9902", "edi_procedure", "흉부촬영(예시)", "12440")),
    "injection_service": (_svc("injection_service", "KK9010", "edi_procedure", "근육주사 수기료(예시)", "3000"),
                          _svc("injection_service", "KK9020", "edi_procedure", "정맥주사 수기료(예시)", "5120")),
    "medication_service": (_svc("medication_service", "J9100", "edi_procedure", "조제료(예시)", "1420"),),
    "materials": (_svc("materials", "J9999991", "edi_material", "치료재료(예시)", "1500", "full_copay"),
                  _svc("materials", "J9999992", "edi_material", "드레싱재료(예시)", "820")),
    "rehab_physio": (_svc("rehab_physio", "MM9010", "edi_procedure", "표층열치료(예시)", "1220"),
                     _svc("rehab_physio", "NC-0001", "local", "도수치료(예시)", "30000", "non_covered")),
    "procedure_surgery": (_svc("procedure_surgery", "M9901", "edi_procedure", "단순처치(예시)", "5430"),
                          _svc("procedure_surgery", "N9902", "edi_procedure", "수술(예시)", "412300")),
    "anesthesia": (_svc("anesthesia", "L9901", "edi_procedure", "전신마취(예시)", "152300"),),
    "room_ward": (_svc("room_ward", "AB9220", "edi_procedure", "입원료 다인실(예시)", "48010"),),
    "room_single": (_svc("room_single", "NC-ROOM1", "local", "상급병실료 1인실(예시)", "150000", "non_covered"),),
    "meals": (_svc("meals", "FA9110", "edi_procedure", "일반식(예시)", "5510"),),
    "ct": (_svc("ct", "HA9401", "edi_procedure", "CT 진단(예시)", "105300"),),
    "mri": (_svc("mri", "NC-MRI1", "local", "MRI 진단(예시)", "450000", "non_covered"),),
    "ultrasound": (_svc("ultrasound", "NC-US01", "local", "초음파 진단(예시)", "80000", "non_covered"),),
    "certificates": (_svc("certificates", "NC-CERT1", "local", "진료확인서(예시)", "3000", "non_covered"),),
    "prosthetics_orthodontics": (_svc("prosthetics_orthodontics", "NC-PR01", "local", "보철(예시)", "350000",
                                      "non_covered"),),
}  # fmt: skip
# 식대 본인부담 50 %, everything else at the visit's rate (simplified 본인부담률).
ITEM_COPAY_RATE_OVERRIDE: dict[str, Decimal] = {"meals": Decimal("0.5")}
