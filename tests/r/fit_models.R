# Reference fits of every reported model with lme4 / lmerTest / survival.
#
#   Rscript tests/r/fit_models.R            (from the repository root)
#
# For each cohort tests/data/r/<name>_{volumes,clinical}.csv it writes tests/data/r/<name>_reference.json.
# The tests compare wmhseg's numbers with these files; only regenerating them needs R
# (Debian: r-base-core r-cran-lme4 r-cran-lmertest r-cran-survival).
# The data preparation follows the documented contracts of analyze.py: scans with status ok joined
# to clinical rows, age at the baseline scan, survival groups at 24 months.

suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
  library(survival)
  library(jsonlite)
})

CUTOFF <- 24
LANDMARK <- 12
# tight tolerances, so that the reference is the REML optimum itself
CTRL <- lmerControl(optimizer = "nloptwrap",
                    optCtrl = list(xtol_abs = 1e-12, ftol_abs = 1e-14, xtol_rel = 1e-12,
                                   ftol_rel = 1e-14, maxeval = 1e5))

py_name <- function(x) {
  x <- gsub("(Intercept)", "Intercept", x, fixed = TRUE)
  for (f in c("group", "cohort", "survival_group", "sex")) {
    x <- gsub(paste0("\\b", f, "(ALS|control|long|short|M)\\b"), paste0(f, "[T.\\1]"), x, perl = TRUE)
  }
  x
}

prepare <- function(name) {
  vol <- read.csv(sprintf("tests/data/r/%s_volumes.csv", name), colClasses = c(subject_id = "character", session_id = "character"))
  clin <- read.csv(sprintf("tests/data/r/%s_clinical.csv", name), colClasses = c(subject_id = "character", session_id = "character"))
  vol <- vol[vol$status == "ok" & is.finite(vol$wmh_mm3), c("subject_id", "session_id", "wmh_mm3")]
  d <- merge(vol, clin, by = c("subject_id", "session_id"))
  d <- d[order(d$subject_id, d$years_since_baseline), ]
  first <- !duplicated(d$subject_id)
  base <- d[first, ]
  d$age <- base$age[match(d$subject_id, base$subject_id)]
  months <- tapply(d$survival_months, d$subject_id, function(v) v[!is.na(v)][1])
  event <- tapply(d$event, d$subject_id, function(v) v[!is.na(v)][1])
  d$survival_months <- months[d$subject_id]
  d$event <- event[d$subject_id]
  d$survival_group <- ifelse(d$group != "ALS" | is.na(d$survival_months), NA,
                      ifelse(d$survival_months >= CUTOFF, "long",
                      ifelse(!is.na(d$event) & d$event == 1, "short", NA)))
  d$cohort <- ifelse(d$group == "control", "control", d$survival_group)
  d$group <- factor(d$group, levels = c("control", "ALS"))
  d$sex <- factor(d$sex, levels = c("F", "M"))
  d
}

lmm <- function(formula, data, contrast = NULL) {
  fit <- lmer(formula, data = data, REML = TRUE, control = CTRL)
  co <- summary(fit)$coefficients
  terms <- list()
  for (i in seq_len(nrow(co))) {
    terms[[py_name(rownames(co)[i])]] <- list(estimate = co[i, "Estimate"], std_err = co[i, "Std. Error"],
                                              df = co[i, "df"], p_value = co[i, "Pr(>|t|)"])
  }
  out <- list(n_obs = nrow(data), n_subjects = length(unique(data$subject_id)), terms = terms,
              theta = unname(getME(fit, "theta")), sigma = sigma(fit), reml_deviance = REMLcrit(fit),
              singular = isSingular(fit))
  if (!is.null(contrast)) {
    L <- setNames(numeric(nrow(co)), py_name(rownames(co)))
    L[names(contrast)] <- unlist(contrast)
    ct <- contest1D(fit, L)
    out$contrast <- list(weights = as.list(contrast), estimate = ct$Estimate, std_err = ct$`Std. Error`,
                         df = ct$df, p_value = ct$`Pr(>|t|)`)
  }
  list(fit = fit, out = out)
}

slope_lrt <- function(ri, rs) {
  chi2 <- max(2 * (logLik(rs)[1] - logLik(ri)[1]), 0)
  list(chi2 = chi2, p_value = 0.5 * pchisq(chi2, 1, lower.tail = FALSE) + 0.5 * pchisq(chi2, 2, lower.tail = FALSE))
}

mixed_models <- function(d) {
  covs <- "+ age + sex"
  survivors <- d[!is.na(d$cohort), ]
  survivors$cohort <- factor(survivors$cohort, levels = c("control", "long", "short"))
  frs <- d[d$group == "ALS" & !is.na(d$alsfrs_r), ]
  frs_g <- frs[!is.na(frs$survival_group), ]
  frs_g$survival_group <- factor(frs_g$survival_group, levels = c("long", "short"))
  f1 <- paste("wmh_mm3 ~ years_since_baseline * group", covs)
  f2 <- paste("wmh_mm3 ~ years_since_baseline * cohort", covs)
  short_long <- list(`years_since_baseline:cohort[T.short]` = 1, `years_since_baseline:cohort[T.long]` = -1)
  m1 <- lmm(as.formula(paste(f1, "+ (1 | subject_id)")), d)
  m1s <- lmm(as.formula(paste(f1, "+ (years_since_baseline | subject_id)")), d)
  m2 <- lmm(as.formula(paste(f2, "+ (1 | subject_id)")), survivors, short_long)
  m2s <- lmm(as.formula(paste(f2, "+ (years_since_baseline | subject_id)")), survivors, short_long)
  m3 <- lmm(as.formula(paste("alsfrs_r ~ wmh_mm3", covs, "+ (1 | subject_id)")), frs)
  m3t <- lmm(as.formula(paste("alsfrs_r ~ wmh_mm3 + years_since_baseline", covs, "+ (1 | subject_id)")), frs)
  m4 <- lmm(as.formula(paste("alsfrs_r ~ wmh_mm3 * survival_group", covs, "+ (1 | subject_id)")), frs_g)
  # sensitivity: the four models on log(WMH + 1)
  for (frame in c("d", "survivors", "frs", "frs_g")) assign(frame, transform(get(frame), log_wmh = log1p(wmh_mm3)))
  l1 <- lmm(as.formula(paste("log_wmh ~ years_since_baseline * group", covs, "+ (1 | subject_id)")), d)
  l2 <- lmm(as.formula(paste("log_wmh ~ years_since_baseline * cohort", covs, "+ (1 | subject_id)")), survivors)
  l3 <- lmm(as.formula(paste("alsfrs_r ~ log_wmh", covs, "+ (1 | subject_id)")), frs)
  l4 <- lmm(as.formula(paste("alsfrs_r ~ log_wmh * survival_group", covs, "+ (1 | subject_id)")), frs_g)
  m1s$out$slope_lrt <- slope_lrt(m1$fit, m1s$fit)
  m2s$out$slope_lrt <- slope_lrt(m2$fit, m2s$fit)
  list(model1_wmh_als_vs_control = m1$out, model1_random_slope = m1s$out,
       model2_wmh_by_survival_group = m2$out, model2_random_slope = m2s$out,
       model3_alsfrs_vs_wmh = m3$out, model3_with_time = m3t$out,
       model4_alsfrs_vs_wmh_by_survival_group = m4$out,
       model1_wmh_als_vs_control_log_wmh = l1$out, model2_wmh_by_survival_group_log_wmh = l2$out,
       model3_alsfrs_vs_wmh_log_wmh = l3$out, model4_alsfrs_vs_wmh_by_survival_group_log_wmh = l4$out)
}

cox_out <- function(fit) {
  s <- summary(fit)$coefficients
  zph <- cox.zph(fit)
  terms <- list()
  for (i in seq_len(nrow(s))) {
    nm <- rownames(s)[i]
    terms[[py_name(nm)]] <- list(coef = s[i, "coef"], std_err = s[i, "se(coef)"], p_value = s[i, "Pr(>|z|)"],
                                 ph_chi2 = zph$table[i, "chisq"], ph_p_value = zph$table[i, "p"])
  }
  list(n = fit$n, events = fit$nevent, terms = terms, ph_global_chi2 = zph$table["GLOBAL", "chisq"],
       ph_global_p = zph$table["GLOBAL", "p"], concordance = unname(fit$concordance["concordance"]))
}

patients_of <- function(d) {
  als <- d[d$group == "ALS" & !is.na(d$survival_months) & !is.na(d$event), ]
  als[!duplicated(als$subject_id), ]   # rows are sorted by time within subject: the baseline scan
}

km_out <- function(p) {
  split_at <- median(p$wmh_mm3)
  p$half <- factor(ifelse(p$wmh_mm3 <= split_at, "low", "high"), levels = c("low", "high"))
  km <- survfit(Surv(survival_months, event) ~ half, data = p)
  tab <- summary(km)$table
  lr <- survdiff(Surv(survival_months, event) ~ half, data = p)
  groups <- list()
  for (g in c("low", "high")) {
    row <- tab[paste0("half=", g), ]
    groups[[g]] <- list(n = unname(row["records"]), events = unname(row["events"]), median_months = unname(row["median"]),
                        median_ci_low = unname(row["0.95LCL"]), median_ci_high = unname(row["0.95UCL"]))
  }
  list(split_at = split_at, logrank_chi2 = lr$chisq, logrank_p = pchisq(lr$chisq, 1, lower.tail = FALSE), groups = groups)
}

intervals_of <- function(d) {
  als <- d[d$group == "ALS" & !is.na(d$survival_months) & !is.na(d$event), ]
  als$start <- 12 * als$years_since_baseline
  als <- als[als$start < als$survival_months, ]
  nxt <- c(als$start[-1], NA)
  last <- c(als$subject_id[-1] != als$subject_id[-nrow(als)], TRUE)
  als$stop <- ifelse(last, als$survival_months, nxt)
  als$status <- ifelse(last, als$event, 0)
  als$wmh_per_1000mm3 <- als$wmh_mm3 / 1000
  als
}

landmark_out <- function(d) {
  als <- d[d$group == "ALS" & !is.na(d$survival_months) & !is.na(d$event) & 12 * d$years_since_baseline <= LANDMARK, ]
  slopes <- sapply(split(als, als$subject_id), function(g) {
    if (length(unique(g$years_since_baseline)) < 2) return(NA)
    unname(coef(lm(wmh_mm3 ~ years_since_baseline, data = g))[2])
  })
  p <- als[!duplicated(als$subject_id), ]
  p$wmh_slope_per_1000mm3_per_year <- slopes[p$subject_id] / 1000
  p <- p[p$survival_months > LANDMARK & !is.na(p$wmh_slope_per_1000mm3_per_year), ]
  p$time <- p$survival_months - LANDMARK
  fit <- coxph(Surv(time, event) ~ wmh_slope_per_1000mm3_per_year + age + sex, data = p, ties = "efron")
  c(list(landmark_months = LANDMARK), cox_out(fit))
}

survival_models <- function(d) {
  p <- patients_of(d)
  p$wmh_per_1000mm3 <- p$wmh_mm3 / 1000
  base <- coxph(Surv(survival_months, event) ~ wmh_per_1000mm3 + age + sex, data = p, ties = "efron")
  tv <- coxph(Surv(start, stop, status) ~ wmh_per_1000mm3 + age + sex, data = intervals_of(d), ties = "efron")
  pc <- p[!is.na(p$alsfrs_r), ]
  clinical <- coxph(Surv(survival_months, event) ~ age + sex + alsfrs_r, data = pc, ties = "efron")
  with_wmh <- coxph(Surv(survival_months, event) ~ age + sex + alsfrs_r + wmh_per_1000mm3, data = pc, ties = "efron")
  list(kaplan_meier = list(baseline_wmh = km_out(p)),
       cox = list(cox_baseline = cox_out(base), cox_time_varying = cox_out(tv)),
       landmark = landmark_out(d),
       prognostic_value = list(n = nrow(pc), events = sum(pc$event),
                               c_clinical = unname(clinical$concordance["concordance"]),
                               c_clinical_wmh = unname(with_wmh$concordance["concordance"])))
}

for (name in c("cohort360", "cohort30")) {
  d <- prepare(name)
  ref <- list(software = list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                              lmerTest = as.character(packageVersion("lmerTest")),
                              survival = as.character(packageVersion("survival"))),
              mixed = mixed_models(d), survival = survival_models(d))
  write_json(ref, sprintf("tests/data/r/%s_reference.json", name), auto_unbox = TRUE, digits = NA,
             pretty = TRUE, na = "null")
  cat("wrote", sprintf("tests/data/r/%s_reference.json", name), "\n")
}
