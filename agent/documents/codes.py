"""Code tables of documents.md §8 (ID-7 … ID-11) as data, so they can be updated without logic changes.

Only membership is used by the rules (W-104, W-022, R-026, R-310); the Korean labels are kept for
documentation and renderers.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

# ID-7 진료과목 (HIRA department codes); codes outside → W-104.
DEPARTMENTS: Mapping[str, str] = MappingProxyType({
    "00": "일반의", "01": "내과", "02": "신경과", "03": "정신건강의학과", "04": "외과",
    "05": "정형외과", "06": "신경외과", "07": "흉부외과", "08": "성형외과", "09": "마취통증의학과",
    "10": "산부인과", "11": "소아청소년과", "12": "안과", "13": "이비인후과", "14": "피부과",
    "15": "비뇨의학과", "16": "영상의학과", "17": "방사선종양학과", "18": "병리과",
    "19": "진단검사의학과", "20": "결핵과", "21": "재활의학과", "22": "핵의학과", "23": "가정의학과",
    "24": "응급의학과", "25": "직업환경의학과", "26": "예방의학과", "49": "치과",
    "50": "구강악안면외과", "51": "치과보철과", "52": "치과교정과", "53": "소아치과", "54": "치주과",
    "55": "치과보존과", "56": "구강내과", "57": "영상치의학과", "58": "구강병리과", "59": "예방치과",
    "61": "통합치의학과", "80": "한방내과", "81": "한방부인과", "82": "한방소아과",
    "83": "한방안·이비인후·피부과", "84": "한방신경정신과", "85": "침구과", "86": "한방재활의학과",
    "87": "사상체질과", "88": "한방응급",
})  # fmt: skip

# ID-8 요양기관 종별 (type_code); codes outside → W-022.
INSTITUTION_TYPES: Mapping[str, str] = MappingProxyType({
    "01": "상급종합병원", "11": "종합병원", "21": "병원", "28": "요양병원", "29": "정신병원",
    "31": "의원", "41": "치과병원", "51": "치과의원", "61": "조산원", "71": "보건소", "72": "보건지소",
    "73": "보건진료소", "74": "모자보건센터", "75": "보건의료원", "81": "약국", "91": "한방종합병원",
    "92": "한방병원", "93": "한의원", "94": "한약방",
})  # fmt: skip
PHARMACY_TYPE_CODE = "81"
LTC_HOSPITAL_TYPE_CODE = "28"

# ID-9 환자구분 (patient_category) → HIRA 보험자구분 used by FHIR (None = no mapping).
PATIENT_CATEGORY_INSURANCE: Mapping[str, str | None] = MappingProxyType({
    "health_insurance": "4", "medical_aid": "5", "veterans": "7", "free_care": "9",
    "auto_insurance": None, "industrial_accident": None, "general": None, "other": None,
})  # fmt: skip
PATIENT_CATEGORIES: tuple[str, ...] = tuple(PATIENT_CATEGORY_INSURANCE)

# ID-10 본인부담률 구분코드.
COPAY_RATES: Mapping[str, str] = MappingProxyType({
    "A": "100분의 50", "B": "100분의 80", "D": "100분의 30", "E": "100분의 90",
    "U": "건강보험(의료급여) 100분의 100 본인부담", "V": "보훈 등 100분의 100 본인부담", "W": "비급여",
})  # fmt: skip
COPAY_RATE_CODES: tuple[str, ...] = tuple(COPAY_RATES)
FULL_SELF_PAY_RATE_CODES: frozenset[str] = frozenset({"U", "V", "W"})  # W-511

# ID-11 면허종별.
LICENSE_TYPES_KO: Mapping[str, str] = MappingProxyType({
    "physician": "의사", "dentist": "치과의사", "korean_medicine_doctor": "한의사",
})  # fmt: skip
LICENSE_TYPES: tuple[str, ...] = tuple(LICENSE_TYPES_KO)
