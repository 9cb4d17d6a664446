"""What a FHIR REST URL looks like, for outbound URLs made safe (`signals.urls`) and for the
fix of an HTTP N+1 against a FHIR server (`signals.http_n_plus_one`).

FHIR's REST API (https://hl7.org/fhir/http.html) spells its paths ``[base]/[type]/[id]``,
``[base]/[type]/[id]/_history/[vid]``, ``[base]/[type]/[id]/[compartment type]``,
``[base]/[type]/$[operation]`` and ``[base]/[type]/_search``: a resource type's name is
capitalised (``Patient``), which the generic rule for outbound paths (keep only a few API
words) would make a placeholder, and the segment after it is a logical id
(``[A-Za-z0-9.-]{1,64}``), which may be a word (``/Patient/search``) that rule would keep. Search
parameters take comma-separated values as OR (``_id=a,b,c``, ``patient=1,2,3``), which is the
batch form of a per-id loop. Standard library only.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["RESOURCE_TYPES", "batch_fix", "is_keyword", "path_resource"]

# FHIR R4 and R5 resource types (https://hl7.org/fhir/resourcelist.html).
RESOURCE_TYPES: Final = frozenset(
    """
    Account ActivityDefinition ActorDefinition AdministrableProductDefinition AdverseEvent
    AllergyIntolerance Appointment AppointmentResponse ArtifactAssessment AuditEvent Basic Binary
    BiologicallyDerivedProduct BiologicallyDerivedProductDispense BodyStructure Bundle
    CanonicalResource CapabilityStatement CarePlan CareTeam CatalogEntry ChargeItem
    ChargeItemDefinition Citation Claim ClaimResponse ClinicalImpression ClinicalUseDefinition
    CodeSystem Communication CommunicationRequest CompartmentDefinition Composition ConceptMap
    Condition ConditionDefinition Consent Contract Coverage CoverageEligibilityRequest
    CoverageEligibilityResponse DetectedIssue Device DeviceAssociation DeviceDefinition
    DeviceDispense DeviceMetric DeviceRequest DeviceUsage DeviceUseStatement DiagnosticReport
    DocumentManifest DocumentReference EffectEvidenceSynthesis Encounter EncounterHistory Endpoint
    EnrollmentRequest EnrollmentResponse EpisodeOfCare EventDefinition Evidence EvidenceReport
    EvidenceVariable ExampleScenario ExplanationOfBenefit FamilyMemberHistory Flag
    FormularyItem GenomicStudy Goal GraphDefinition Group GuidanceResponse HealthcareService
    ImagingSelection ImagingStudy Immunization ImmunizationEvaluation ImmunizationRecommendation
    ImplementationGuide Ingredient InsurancePlan InventoryItem InventoryReport Invoice Library
    Linkage List Location ManufacturedItemDefinition Measure MeasureReport Media Medication
    MedicationAdministration MedicationDispense MedicationKnowledge MedicationRequest
    MedicationStatement MedicinalProduct MedicinalProductDefinition MessageDefinition
    MessageHeader MetadataResource MolecularSequence NamingSystem NutritionIntake NutritionOrder
    NutritionProduct Observation ObservationDefinition OperationDefinition OperationOutcome
    Organization OrganizationAffiliation PackagedProductDefinition Parameters Patient
    PaymentNotice PaymentReconciliation Permission Person PlanDefinition Practitioner
    PractitionerRole Procedure Provenance Questionnaire QuestionnaireResponse RegulatedAuthorization
    RelatedPerson RequestGroup RequestOrchestration Requirements ResearchDefinition
    ResearchElementDefinition ResearchStudy ResearchSubject RiskAssessment RiskEvidenceSynthesis
    Schedule SearchParameter ServiceRequest Slot Specimen SpecimenDefinition StructureDefinition
    StructureMap Subscription SubscriptionStatus SubscriptionTopic Substance SubstanceDefinition
    SubstanceNucleicAcid SubstancePolymer SubstanceProtein SubstanceReferenceInformation
    SubstanceSourceMaterial SupplyDelivery SupplyRequest Task TerminologyCapabilities TestPlan
    TestReport TestScript Transport ValueSet VerificationResult VisionPrescription
    """.split()  # noqa: SIM905 - a list of 160 names reads better as words
)

# Path segments of the FHIR REST API itself, and the version names servers put in their base
# URL (``/r4/``, HAPI's ``/baseR4/``): kept wherever they are.
_KEYWORDS: Final = frozenset(
    (
        *("_history", "_search", "metadata"),
        *("r2", "r3", "r4", "r4b", "r5", "stu3", "dstu2", "R4", "R4B", "R5", "STU3", "DSTU2"),
        *("baseR4", "baseR4B", "baseR5", "baseDstu3", "baseDstu2"),
    )
)
_OPERATION: Final = re.compile(r"\$[a-z][a-z-]{0,40}")  # $everything, $validate, $lastn


def is_keyword(segment: str) -> bool:
    """``_history``, ``_search``, ``metadata`` and operations (``$everything``)."""
    return segment in _KEYWORDS or _OPERATION.fullmatch(segment) is not None


def path_resource(path: str) -> tuple[str, bool] | None:
    """(resource type, whether an id follows it) of the last resource type in a path, or None:
    ``/fhir/Patient/{id}`` -> ``("Patient", True)``; ``/fhir/Observation`` -> ``("Observation",
    False)``; ``/fhir/Patient/{id}/Observation`` (a compartment search) -> ``("Observation",
    False)``."""
    segments = [s for s in path.split("/") if s]
    for index in range(len(segments) - 1, -1, -1):
        if segments[index] in RESOURCE_TYPES:
            following = segments[index + 1 : index + 2]
            return segments[index], bool(following) and not is_keyword(following[0])
    return None


def batch_fix(method: str, path: str, query_names: tuple[str, ...]) -> str | None:
    """The one FHIR request that replaces a loop of requests to `path` (an already templated
    path), or None when the path is not a FHIR read or search."""
    found = path_resource(path)
    if found is None or method not in ("GET", "POST"):
        return None
    resource, by_id = found
    base = path[: path.rfind(resource)]
    if by_id and [s for s in path.split("/") if s][-2:] != [resource, "{id}"]:
        return None  # a version read, an instance operation: no search form
    if by_id:
        return (
            f"one search instead of a read per id: GET {base}{resource}?_id=id1,id2,id3 "
            f"(FHIR ORs comma-separated values; page with _count), or a batch Bundle "
            f"POST {base.rstrip('/') or '/'} with one GET entry per id"
        )
    varying = [n for n in query_names if not n.startswith("_") or n == "_id"]
    if varying:
        name = varying[0]
        return (
            f"one search for every value: GET {base}{resource}?{name}=v1,v2,v3 (FHIR ORs "
            f"comma-separated values; page with _count), or a batch Bundle POST "
            f"{base.rstrip('/') or '/'} with one entry per value"
        )
    return None
