-- HL7 ADT columns → patient row (the seed's FieldMappings, as SQL).
-- The MRN is the identifier whose type (CX-5) is MR, wherever it sits in PID-3.
SELECT
  array_element(patient_ids, CAST(array_position(patient_id_types, 'MR') AS BIGINT)) AS mrn,
  upper(trim(family))                                 AS family_name,
  initcap(given)                                      AS given_name,
  birth_date,
  CASE sex
    WHEN 'M' THEN 'male' WHEN 'F' THEN 'female'
    WHEN 'O' THEN 'other' WHEN 'U' THEN 'unknown'
  END                                                 AS gender,
  sex                                                 AS sex_code,
  normalize_phone(coalesce(phone_area || phone_local, phone_text)) AS phone,
  lower(email)                                        AS email,
  street, city, state, postal_code,
  upper(facility_code)                                AS facility_code,
  CASE patient_class WHEN 'I' THEN 'inpatient' WHEN 'O' THEN 'outpatient'
                     WHEN 'E' THEN 'emergency' ELSE 'unknown' END AS encounter_class,
  event_type,
  message_time
FROM input
