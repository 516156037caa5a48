using System.Text.Json;
using System.Text.Json.Serialization;

namespace Haven.Protocol;

// The wire contracts of /api/v1, shared by the server, the agent and the admin CLI. JSON with snake_case names
// (ProtocolJson.Options); times are RFC 3339 in UTC. Adding a field is compatible; renaming or removing one needs
// /api/v2.

/// <summary>Every error response: a stable code, a message for people, and what to do.</summary>
public sealed record ApiError(string Error, string Message, string? Hint = null);

/// <summary>POST /api/v1/enroll: an agent with an enrolment token asks for a client certificate.</summary>
public sealed record EnrollRequest(string Token, string CsrPem, string Hostname, string? ClientName = null, string? AgentVersion = null);

public sealed record EnrollResponse(string ClientId, string TenantId, string ClientName, string CertificatePem, string CaPem, DateTimeOffset NotAfter, string? RepositoryKeyId = null);

/// <summary>POST /api/v1/agent/renew: a new certificate for the key in <see cref="CsrPem"/>, before the old one expires.</summary>
public sealed record RenewRequest(string CsrPem);

public sealed record RenewResponse(string CertificatePem, DateTimeOffset NotAfter);

/// <summary>POST /api/v1/agent/ready: the agent's ready signal (at start, when the network returns, on demand).</summary>
public sealed record ReadyRequest(string Reason, string Hostname, string? AgentVersion = null);

public sealed record ReadyResponse(string ClientId, string ClientName, string TenantId, DateTimeOffset ServerTime, DateTimeOffset CertificateNotAfter, bool RenewCertificate, int JobsQueued = 0);

public sealed record TenantInfo(string Id, string Name, DateTimeOffset Created);

public sealed record CreateTenantRequest(string Name);

public sealed record ClientInfo(string Id, string TenantId, string Name, string? Hostname, DateTimeOffset Enrolled, DateTimeOffset? LastSeen, string CertificateFingerprint, DateTimeOffset CertificateNotAfter, DateTimeOffset? Revoked);

/// <summary>
/// POST /api/v1/tenants/{tenant}/enrollment-tokens. With a client name the token enrols that one client once; without,
/// it enrols up to <see cref="Uses"/> clients of the tenant, each naming itself.
/// </summary>
public sealed record CreateEnrollmentTokenRequest(string? ClientName = null, int? Uses = null, long? ExpiresInSeconds = null, string? RepositoryKeyId = null);

public sealed record EnrollmentTokenInfo(string Id, string Token, string TenantId, string? ClientName, int Uses, DateTimeOffset Expires, string? RepositoryKeyId = null);

/// <summary>The calling administrator (<c>GET /api/v1/me</c>).</summary>
public sealed record AdminIdentity(string Id, string Name, string Role, string? TenantId);

/// <summary>The answer to a revocation: the client's name.</summary>
public sealed record RevokedClient(string Revoked);

public sealed record AdminInfo(string Id, string Name, string? TenantId, string Role, DateTimeOffset Created);

public sealed record CreateAdminRequest(string Name, string Password, string Role, string? TenantId = null);

/// <summary>POST /api/v1/auth/token: a password exchanged for an API token.</summary>
public sealed record LoginRequest(string Name, string Password);

public sealed record LoginResponse(string Token, string AdminId, string Role, string? TenantId);

/// <summary>
/// One refused authentication and the path it came by: the fingerprint an administrator follows to its source.
/// </summary>
public sealed record AuthFailureInfo(
    long Id,
    DateTimeOffset Time,
    string Kind,
    string Reason,
    string RemoteAddress,
    int RemotePort,
    string? ForwardedFor,
    string? CertificateFingerprint,
    string? CertificateSubject,
    string? ServerName,
    string? UserAgent,
    string Path);

public sealed record AuditEntry(long Id, DateTimeOffset Time, string Actor, string? TenantId, string Action, string Detail);

/// <summary>GET /api/v1/health, unauthenticated: enough to tell a Haven server is there, nothing more.</summary>
public sealed record HealthInfo(string Status, string Version, string CaFingerprint);

/// <summary>The serializer settings of the protocol.</summary>
public static class ProtocolJson
{
    public static JsonSerializerOptions Options { get; } = new(JsonSerializerDefaults.Web)
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        // Messages are read by programs and people, never embedded in HTML: keep apostrophes and non-ASCII as they are.
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };
}

/// <summary>One file of a hosted repository, as a listing names it.</summary>
public sealed record RepositoryFileInfo(string Name, long Size);

/// <summary>Which of these blob ids (hex) does the tenant's repository hold?</summary>
public sealed record CatalogQuery(IReadOnlyList<string> Ids);

public sealed record CatalogAnswer(IReadOnlyList<string> Known);

/// <summary>Packs an index file now names, with the blob ids in each.</summary>
public sealed record CatalogRegistration(IReadOnlyList<CatalogPackInfo> Packs);

public sealed record CatalogPackInfo(string Pack, IReadOnlyList<string> Blobs);

public sealed record CatalogRegistered(int Packs, int Blobs, int UnknownPacks);

/// <summary>
/// A tenant's repository as the server sees it: bytes held, quota (null: none), whether it was initialised, whether the
/// server holds a key to it (for pruning; docs/key-model.md), and when its maintenance last ran.
/// </summary>
public sealed record RepositoryInfo(string TenantId, bool Initialized, long UsageBytes, long? QuotaBytes, bool ServerKey = false, DateTimeOffset? LastMaintenance = null);

/// <summary>
/// PUT /api/v1/tenants/{t}/repository/server-key: a key file of the tenant's repository and the secret that opens it,
/// given to the server so its maintenance can prune (the administrator makes both; the server checks they fit).
/// </summary>
public sealed record ServerKeyRequest(string KeyId, string Secret);

/// <summary>
/// What one maintenance run did to a tenant's repository: snapshots forgotten by the plans' retention (from the
/// job records), snapshots it left alone (named by a job of a client that did not upload them), and the prune.
/// </summary>
public sealed record MaintenanceResult(
    string TenantId, int SnapshotsForgotten, IReadOnlyList<string> Forgotten, int SnapshotsRefused, bool Pruned,
    string? PruneSkipped, int PacksDeleted, int PacksRepacked, long BytesFreed, DateTimeOffset Finished);

public sealed record SetQuotaRequest(long? QuotaBytes);

/// <summary>How many snapshots a plan keeps (as <c>haven forget --keep-*</c>); null fields keep nothing by that rule.</summary>
public sealed record RetentionSpec(int? KeepLast = null, int? KeepHourly = null, int? KeepDaily = null, int? KeepWeekly = null, int? KeepMonthly = null, int? KeepYearly = null);

/// <summary>
/// A backup set: what to back up (paths, excludes), when (a schedule, and/or on the client's ready signal), how many
/// snapshots to keep, and at most how fast to send. It applies to one client or to every client of a group.
/// <para>
/// <see cref="Kind"/> is <see cref="PlanKinds.Files"/> (the default, also when absent) or <see cref="PlanKinds.Image"/>:
/// then the one path is a disk, partition or image file backed up block by block (<c>haven image backup</c>), in
/// blocks of <see cref="BlockSize"/> bytes (default 64 KiB).
/// </para>
/// </summary>
public sealed record PlanSpec(
    string Name,
    IReadOnlyList<string> Paths,
    IReadOnlyList<string>? Excludes = null,
    string? Schedule = null,
    bool RunOnReady = false,
    RetentionSpec? Retention = null,
    long? BandwidthBytesPerSecond = null,
    string? Client = null,
    string? Group = null,
    string? Kind = null,
    int? BlockSize = null);

/// <summary>What a plan backs up: files and folders, or one disk image.</summary>
public static class PlanKinds
{
    public const string Files = "files";
    public const string Image = "image";

    public static string Of(PlanSpec plan) => plan.Kind ?? Files;
}

public sealed record PlanInfo(string Id, string TenantId, PlanSpec Spec, string? ClientId, string? GroupId, DateTimeOffset? NextRun, DateTimeOffset Created);

public sealed record CreateGroupRequest(string Name, IReadOnlyList<string>? Clients = null);

public sealed record GroupInfo(string Id, string TenantId, string Name, IReadOnlyList<string> ClientIds);

/// <summary>Counts of a finished backup job, readable by the server without the repository key.</summary>
public sealed record JobStats(
    long FilesNew, long FilesChanged, long FilesUnmodified, long FilesRestored,
    long BytesProcessed, long BytesAdded, long BytesStored, long BytesSkippedByCatalog, long Errors, double DurationSeconds);

public sealed record JobProgress(long FilesDone, long FilesTotal, long BytesDone, long BytesTotal, long Errors, DateTimeOffset Time);

/// <summary>
/// What a restore job restores, and where: a file snapshot into a folder, or an image snapshot onto a disk or image
/// file (<see cref="Grow"/>: grow its last partition and filesystem to a larger target, as <c>haven image restore --grow</c>).
/// </summary>
public sealed record RestoreSpec(string Snapshot, string Target, IReadOnlyList<string>? Paths = null, bool Grow = false);

/// <summary>POST /api/v1/tenants/{t}/restores: restore a snapshot onto a client of the tenant.</summary>
public sealed record RestoreRequest(string Snapshot, string Client, string Target, IReadOnlyList<string>? Paths = null, bool Grow = false);

/// <summary>POST /api/v1/tenants/{t}/clients/{c}/run: start the client's plans (or one plan) now.</summary>
public sealed record RunNowRequest(string? Plan = null);

/// <summary>Job states: queued, running, verifying, then one of succeeded, partial, failed, interrupted.</summary>
public static class JobStates
{
    public const string Queued = "queued";
    public const string Running = "running";
    public const string Verifying = "verifying";
    public const string Succeeded = "succeeded";
    public const string Partial = "partial";
    public const string Failed = "failed";
    public const string Interrupted = "interrupted";

    public static bool IsFinal(string state) => state is Succeeded or Partial or Failed or Interrupted;

    public static bool IsKnown(string state) => state is Queued or Running or Verifying || IsFinal(state);
}

/// <summary>A job as the server records it; <c>Forgotten</c> is when the plan's retention deleted its snapshot.</summary>
public sealed record JobInfo(
    string Id, string TenantId, string ClientId, string? PlanId, string Kind, string Trigger, string State,
    DateTimeOffset Queued, DateTimeOffset? Started, DateTimeOffset? Finished, bool Missed,
    string? SnapshotId, JobStats? Stats, JobProgress? Progress, string? Message, RestoreSpec? Restore, DateTimeOffset? Forgotten = null);

/// <summary>A job handed to an agent: a backup of a plan, or a restore.</summary>
public sealed record JobAssignment(string JobId, string Kind, PlanSpec? Plan, RestoreSpec? Restore);

/// <summary>POST /api/v1/agent/poll: waits up to <see cref="WaitSeconds"/> for work.</summary>
public sealed record PollRequest(int WaitSeconds = 25);

public sealed record PollResponse(IReadOnlyList<JobAssignment> Jobs);

/// <summary>POST /api/v1/agent/jobs/{id}/report: progress while a job runs, and its end.</summary>
public sealed record JobReport(string State, JobProgress? Progress = null, JobStats? Stats = null, string? SnapshotId = null, string? Message = null, DateTimeOffset? Time = null);

/// <summary>A place completion messages go: a webhook URL or an email address.</summary>
public sealed record NotificationTarget(string Id, string Kind, string Address);

public sealed record CreateNotificationTarget(string Kind, string Address);

/// <summary>Answer times of one route (milliseconds, from the request's arrival to its last byte; errors are 5xx answers).</summary>
public sealed record RouteMetrics(string Method, string Route, long Count, long Errors, double P50Ms, double P95Ms, double P99Ms, double MaxMs);

/// <summary>GET /api/v1/server/metrics: answer times since <c>Since</c> (all routes but long polls, and per route) and the server's memory.</summary>
public sealed record ServerMetrics(
    DateTimeOffset Since, DateTimeOffset Now, RouteMetrics All, IReadOnlyList<RouteMetrics> Routes,
    long WorkingSetBytes, long PeakWorkingSetBytes, long GcHeapBytes, int Threads);
