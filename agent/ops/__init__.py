"""Operations: daemon composition, scheduler jobs, status, doctor, admin listener."""
