using System.Diagnostics;

namespace Haven.Server.Security;

/// <summary>An agent's authentication, kept with its TLS connection (see <see cref="AgentSessions"/>).</summary>
public sealed record AgentSession(AgentPrincipal Agent, long Epoch, long CheckedAt);

/// <summary>
/// Lets a TLS connection skip the certificate chain and database checks of an agent it authenticated less than
/// <see cref="MaxAge"/> ago. Each revocation moves the epoch, which ends every kept authentication at once, so a
/// revoked client is refused on its next request whatever connection it uses.
/// </summary>
public sealed class AgentSessions
{
    public static readonly TimeSpan MaxAge = TimeSpan.FromMinutes(1);

    private long _epoch;

    public AgentSession Start(AgentPrincipal agent) => new(agent, Interlocked.Read(ref _epoch), Stopwatch.GetTimestamp());

    public bool IsValid(AgentSession session, TimeProvider time) =>
        session.Epoch == Interlocked.Read(ref _epoch)
        && Stopwatch.GetElapsedTime(session.CheckedAt) < MaxAge
        && time.GetUtcNow() < session.Agent.CertificateNotAfter;

    /// <summary>A client or certificate was revoked: every kept authentication is checked again.</summary>
    public void Revoked() => Interlocked.Increment(ref _epoch);
}
