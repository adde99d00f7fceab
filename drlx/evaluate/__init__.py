"""Sample quality: toy distances, digits features, Inception FID/IS/KID, plots."""
